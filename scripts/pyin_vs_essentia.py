"""pYIN of one WAV file with Essentia's `PitchYinProbabilistic` (C++), as
`scripts/pyin-vs-essentia.sh` times it: 512-sample frames every 160 samples at 16 kHz (specflow's
defaults), f0 and voiced probabilities written one frame per line. Essentia is not a dependency
of specflow: install it in a throwaway environment (`pip install essentia`)."""

import sys

import essentia.standard as es


def main() -> None:
    path, out = sys.argv[1], sys.argv[2]
    audio = es.MonoLoader(filename=path, sampleRate=16000)()
    pyin = es.PitchYinProbabilistic(
        frameSize=512, hopSize=160, sampleRate=16000, outputUnvoiced="zero"
    )
    f0, voiced_prob = pyin(audio)
    with open(out, "w", encoding="ascii") as f:
        for hz, p in zip(f0, voiced_prob):
            f.write(f"{hz:.6g} {p:.6g}\n")


if __name__ == "__main__":
    main()
