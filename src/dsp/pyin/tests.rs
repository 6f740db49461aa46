//! Unit tests of pYIN: parameters and priors against librosa / scipy, the observation step
//! against a direct evaluation, the banded Viterbi against a dense one, the AVX2 step against
//! the portable one, fixed-lag streaming against offline decoding, and snapshots.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::decoder::{StepWork, band_tops, step};
use super::numeric::{TINY, beta_cdf_int, first_argmax, numpy_sum, triangle};
use super::params::PyinParams;
use super::streaming::{PyinDecoder, decode_offline};
use super::tables::Pyin;
use super::transitions::{TransitionBands, per_target_tables};

const SR: f64 = 16000.0;

fn pyin() -> Pyin {
    Pyin::new(&PyinParams::default(), SR, 512, 160).expect("valid parameters")
}

/// A test signal: silence, a 220 Hz tone gliding to 330 Hz, silence, noise, a 440 Hz tone.
fn signal() -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(0x1234_5678);
    let mut noise = move || rng.random_range(-0.5..0.5);
    let mut phase = 0.0;
    (0..24000)
        .map(|i| {
            let t = i as f64 / SR;
            let x = match i {
                0..3000 => 0.0,
                3000..11000 => {
                    let f = 220.0 + 110.0 * (i - 3000) as f64 / 8000.0;
                    phase += 2.0 * std::f64::consts::PI * f / SR;
                    0.5 * phase.sin()
                }
                11000..14000 => 0.0,
                14000..17000 => 0.3 * noise(),
                _ => 0.4 * (2.0 * std::f64::consts::PI * 440.0 * t).sin(),
            };
            x as f32
        })
        .collect()
}

/// Observations and voiced probabilities of every full frame of `samples`.
fn observe_all(pyin: &Pyin, samples: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let mut scratch = pyin.scratch();
    let n = pyin.n_states();
    let frames = (samples.len() - pyin.frame_length()) / pyin.hop_length() + 1;
    let mut obs = vec![0.0; frames * n];
    let mut vps = Vec::with_capacity(frames);
    for (k, out) in obs.chunks_exact_mut(n).enumerate() {
        let start = k * pyin.hop_length();
        let frame = &samples[start..start + pyin.frame_length()];
        vps.push(pyin.observe(frame, &mut scratch, out));
    }
    (obs, vps)
}

/// The dense `n_states x n_states` log-transition matrix (from state, to state) of the band
/// tables, `log(tiny)` off the bands.
fn dense_log_trans(pyin: &Pyin) -> Vec<f64> {
    let n = pyin.n_pitch_bins;
    let ns = 2 * n;
    let mut log_trans = vec![pyin.bands.floor_row[0]; ns * ns];
    for j in 0..n {
        for r in 0..pyin.bands.band_len[j] {
            let i = pyin.bands.band_lo[j] + r;
            let (same, cross) = (pyin.bands.same(j)[r], pyin.bands.cross(j)[r]);
            log_trans[i * ns + j] = same;
            log_trans[(n + i) * ns + n + j] = same;
            log_trans[i * ns + n + j] = cross;
            log_trans[(n + i) * ns + j] = cross;
        }
    }
    log_trans
}

/// librosa's `viterbi` with the dense `n_states x n_states` log-transition matrix (as
/// `log(T + tiny)` from the band tables): the value and back-pointer of every state at
/// every frame.
fn dense_viterbi(pyin: &Pyin, obs: &[f64]) -> (Vec<f64>, Vec<usize>) {
    let ns = 2 * pyin.n_pitch_bins;
    let log_trans = dense_log_trans(pyin);
    let frames = obs.len() / ns;
    let log_prob: Vec<f64> = obs.iter().map(|&p| (p + TINY).ln()).collect();
    let mut value = vec![0.0; frames * ns];
    let mut ptr = vec![0usize; frames * ns];
    for (v, &l) in value.iter_mut().zip(&log_prob[..ns]) {
        *v = l + pyin.log_init;
    }
    for t in 1..frames {
        for j in 0..ns {
            let (mut best, mut best_score) = (0, f64::NEG_INFINITY);
            for k in 0..ns {
                let s = value[(t - 1) * ns + k] + log_trans[k * ns + j];
                if s > best_score {
                    (best, best_score) = (k, s);
                }
            }
            ptr[t * ns + j] = best;
            value[t * ns + j] = log_prob[t * ns + j] + best_score;
        }
    }
    (value, ptr)
}

/// Banded decoding equals dense decoding bit for bit: every value and every back-pointer
/// of every frame, then the decisions.
fn assert_banded_equals_dense(pyin: &Pyin, samples: &[f32], every: usize) -> usize {
    let (obs, vps) = observe_all(pyin, samples);
    let ns = pyin.n_states();
    let frames: Vec<usize> = (0..vps.len()).step_by(every).collect();
    let obs: Vec<f64> = frames
        .iter()
        .flat_map(|&k| obs[k * ns..(k + 1) * ns].iter().copied())
        .collect();
    let vps: Vec<f64> = frames.iter().map(|&k| vps[k]).collect();
    let (value, ptr) = dense_viterbi(pyin, &obs);
    let mut decoder = PyinDecoder::new(pyin, vps.len());
    let mut scratch = pyin.scratch();
    let mut out_of_band = 0;
    let n = pyin.n_pitch_bins;
    for (t, (o, &vp)) in obs.chunks_exact(ns).zip(&vps).enumerate() {
        assert!(decoder.push(pyin, &mut scratch, o, vp).is_none());
        for s in 0..ns {
            assert_eq!(
                decoder.value[s].to_bits(),
                value[t * ns + s].to_bits(),
                "frame {t} state {s}"
            );
            if t > 0 {
                let p = usize::from(decoder.pointers[t * ns + s]);
                assert_eq!(p, ptr[t * ns + s], "frame {t} state {s}");
                out_of_band += usize::from((p % n).abs_diff(s % n) > pyin.bands.half_width);
            }
        }
    }
    let mut decisions = Vec::new();
    decoder.finish(pyin, &mut |d| decisions.push(d));
    let mut state = first_argmax(&value[(vps.len() - 1) * ns..]);
    for t in (0..vps.len()).rev() {
        let voiced = state < n;
        assert_eq!(decisions[t].voiced, voiced, "frame {t}");
        assert_eq!(
            decisions[t].f0,
            voiced.then(|| pyin.bin_frequency(state)),
            "frame {t}"
        );
        if t > 0 {
            state = ptr[t * ns + state];
        }
    }
    out_of_band
}

#[test]
fn defaults_match_librosa() {
    let p = PyinParams::default();
    assert_eq!(p.n_thresholds, 100);
    assert_eq!(p.beta_parameters, (2, 18));
    assert!(p.validate(SR, 512).is_empty());
    let pyin = pyin();
    assert_eq!(pyin.n_pitch_bins(), 602);
    assert_eq!(pyin.transition_width(), 41);
    assert!((pyin.beta_probs.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    // As scipy's: no negative mass, and the CDF reaches exactly 1 from threshold 0.91 on.
    assert!(pyin.beta_probs.iter().all(|&p| p >= 0.0));
    assert_eq!(pyin.beta_probs.iter().filter(|&&p| p == 0.0).count(), 10);
    // scipy.stats.beta.cdf(0.05, 2, 18) and (0.37, 2, 18)
    assert!((beta_cdf_int(0.05, 2, 18) - 0.24529279492938452).abs() < 1e-15);
    assert!((beta_cdf_int(0.37, 2, 18) - 0.9981277723286026).abs() < 1e-15);
    assert_eq!(pyin.bands.floor_row[0], -708.3964185322641);
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Pyin>();
    send_sync::<PyinDecoder>();
}

#[test]
fn validate_lists_every_problem() {
    let p = PyinParams {
        fmin: 3000.0,
        fmax: 2000.0,
        switch_prob: 1.0,
        n_thresholds: 0,
        ..PyinParams::default()
    };
    let problems = p.validate(SR, 512);
    assert_eq!(problems.len(), 3, "{problems:?}");
    let p = PyinParams {
        fmin: 20.0,
        fmax: 9000.0,
        ..PyinParams::default()
    };
    let problems = p.validate(SR, 512);
    assert_eq!(problems.len(), 2, "{problems:?}"); // Nyquist and frame too short
    assert!(Pyin::new(&PyinParams::default(), SR, 512, 0).is_err());
}

#[test]
fn triangle_and_pairwise_sum_as_numpy() {
    assert_eq!(triangle(4), vec![0.25, 0.75, 0.75, 0.25]);
    assert_eq!(triangle(3), vec![0.5, 1.0, 0.5]);
    // np.sum of the same values (a plain left-to-right sum differs in the last bits).
    let a: Vec<f64> = (0..300).map(|i| 1.0 / (i as f64 + 1.0)).collect();
    assert_eq!(numpy_sum(&a), 6.282663880299504);
    let b: Vec<f64> = (0..602)
        .map(|i| ((i * 7919) % 1000) as f64 / 997.0)
        .collect();
    assert_eq!(numpy_sum(&b), 301.9247743229689);
}

#[test]
fn first_argmax_is_the_first_strict_maximum_of_a_scan() {
    // The one-pass definition: the index where the running maximum last strictly grew.
    let scan = |values: &[f64]| {
        let (mut best, mut top) = (0, values[0]);
        for (i, &v) in values.iter().enumerate() {
            if v > top {
                (best, top) = (i, v);
            }
        }
        best
    };
    let (inf, nan) = (f64::INFINITY, f64::NAN);
    let cases: Vec<Vec<f64>> = vec![
        vec![1.0],
        vec![1.0, 3.0, 3.0, 2.0, 3.0],
        vec![-inf, -inf, -inf],
        vec![nan, 5.0, 7.0, 1.0, 2.0],
        vec![1.0, nan, 7.0, nan, 7.0, 2.0],
        vec![-0.0, 0.0, -0.0, -1.0, 0.0],
        vec![-1.0, 0.0, -0.0, 0.0, -0.0, -3.0, 0.0],
        vec![-inf, inf, 2.0, inf],
        (0..1204).map(|i| -f64::from((i * 7919) % 1201)).collect(),
        (0..1203).map(|i| f64::from((i * 31) % 97)).collect(),
    ];
    for values in cases {
        assert_eq!(first_argmax(&values), scan(&values), "{values:?}");
    }
}

#[test]
fn sine_is_voiced_at_its_pitch() {
    let pyin = pyin();
    let samples: Vec<f32> = (0..16000)
        .map(|i| (0.5 * (2.0 * std::f64::consts::PI * 440.0 * i as f64 / SR).sin()) as f32)
        .collect();
    let (obs, vps) = observe_all(&pyin, &samples);
    // librosa.pyin gives 0.89114449 for every frame of this signal.
    assert!(
        vps.iter().all(|&v| (v - 0.891_144_49).abs() < 1e-6),
        "{vps:?}"
    );
    for d in decode_offline(&pyin, &obs, &vps) {
        assert!(d.voiced);
        let f0 = d.f0.expect("voiced");
        assert!((f0 / 440.0 - 1.0).abs() < 0.01, "{f0}");
    }
}

#[test]
fn silence_is_unvoiced() {
    let pyin = pyin();
    let (obs, vps) = observe_all(&pyin, &vec![0.0; 8000]);
    assert!(vps.iter().all(|&v| v == 0.0));
    let decisions = decode_offline(&pyin, &obs, &vps);
    assert_eq!(decisions.len(), vps.len());
    assert!(decisions.iter().all(|d| !d.voiced && d.f0.is_none()));
}

#[test]
fn banded_viterbi_equals_dense_viterbi() {
    // The test signal plus a 2 kHz tone (period 8 samples: its voiced probability is 1, so
    // the unvoiced states fall to log(tiny) and out-of-band transitions win for some states).
    let mut samples = signal();
    samples.extend(
        (0..6000)
            .map(|i| (0.5 * (2.0 * std::f64::consts::PI * 2000.0 * i as f64 / SR).sin()) as f32),
    );
    // Every 4th frame keeps the dense reference affordable in unoptimised builds.
    let out_of_band = assert_banded_equals_dense(&pyin(), &samples, 4);
    assert!(out_of_band > 0, "out-of-band transitions not exercised");
    // An even transition width (5 bins per semitone, 3 semitones per hop: width 16), whose
    // triangle is asymmetric.
    let params = PyinParams {
        resolution: 0.2,
        ..PyinParams::default()
    };
    let even = Pyin::new(&params, SR, 512, 128).expect("valid parameters");
    assert_eq!(even.transition_width(), 16);
    assert_banded_equals_dense(&even, &samples, 5);
}

#[test]
fn shared_table_rows_hold_every_target_s_own_transitions() {
    // Default parameters, and a narrow band over few bins (every row at an edge).
    for (params, sr, hop) in [
        (PyinParams::default(), SR, 160),
        (
            PyinParams {
                fmin: 100.0,
                fmax: 200.0,
                ..PyinParams::default()
            },
            8000.0,
            20,
        ),
    ] {
        let pyin = Pyin::new(&params, sr, 512, hop).expect("valid parameters");
        let bands = &pyin.bands;
        let (n, stride) = (bands.n_bins, 2 * bands.half_width + 1);
        let [same, cross] = per_target_tables(n, pyin.transition_width, params.switch_prob);
        let mut distinct = std::collections::HashSet::new();
        for j in 0..n {
            let band = j * stride..j * stride + bands.band_len[j];
            let bits = |x: &[f64]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(bands.same(j)),
                bits(&same[band.clone()]),
                "same, bin {j}"
            );
            assert_eq!(bits(bands.cross(j)), bits(&cross[band]), "cross, bin {j}");
            distinct.insert(bands.same(j).as_ptr());
        }
        // Most interior bins share a row (their totals round alike).
        let rows = distinct.len();
        assert!(rows < n / 4 + 4 * bands.half_width, "{rows} rows of {n}");
    }
}

#[test]
fn band_tops_are_the_largest_value_of_every_band() {
    let mut rng = StdRng::seed_from_u64(0x2545_f491_4f6c_dd1d);
    // (bins, transition width): the defaults', a band of one, bands as wide as the bins.
    for (n, width) in [
        (602, 41),
        (602, 1),
        (50, 7),
        (41, 41),
        (9, 9),
        (64, 33),
        (100, 63),
    ] {
        let bands = TransitionBands::new(n, width, 0.01);
        for round in 0..20 {
            let values: Vec<f64> = (0..n)
                .map(|_| match rng.random_range(0..16) {
                    0 if round % 2 == 1 => f64::NEG_INFINITY,
                    1 => -3.0,
                    r => -f64::from(r) * 1e3 + f64::from(rng.random_range(0..1000)) * 0.37,
                })
                .collect();
            // Stale data in the work buffer must not leak into a top.
            let (mut windows, mut doubled, mut out) = (vec![0.0; n], vec![7e9; n], vec![0.0; n]);
            band_tops(&values, &bands, [&mut windows, &mut doubled], &mut out);
            for j in 0..n {
                let band = &values[bands.band_lo[j]..bands.band_lo[j] + bands.band_len[j]];
                let want = band.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x));
                assert_eq!(
                    out[j].to_bits(),
                    want.to_bits(),
                    "{n} bins, width {width}, target {j}"
                );
            }
        }
    }
}

#[test]
fn one_step_takes_numpy_s_first_argmax_for_any_values() {
    // The step's searches (bounds, the floor state, the monotone first argmax between
    // neighbours) against a scan of every state, on values no Viterbi run would give:
    // random, with ties (equal values around symmetric bands), and so deep (10^13) that the
    // monotone search is off.
    let pyin = pyin();
    let n = pyin.n_pitch_bins;
    let ns = 2 * n;
    let log_trans = dense_log_trans(&pyin);
    let mut rng = StdRng::seed_from_u64(0x2545_f491);
    let mut random = move || rng.random::<f64>();
    let mut cases: Vec<(&str, Vec<f64>)> = vec![
        ("random", (0..ns).map(|_| -60.0 * random()).collect()),
        ("constant", vec![-3.25; ns]),
        (
            "steps of 1/4",
            (0..ns).map(|_| -(40.0 * random()).round() / 4.0).collect(),
        ),
        (
            "tent",
            (0..ns)
                .map(|k| -0.05 * (k % n).abs_diff(n / 3) as f64 - 9.0)
                .collect(),
        ),
    ];
    let deep: Vec<(&str, Vec<f64>)> = cases
        .iter()
        .map(|(_, v)| ("deep", v.iter().map(|x| x - 1e13).collect()))
        .collect();
    cases.extend(deep);
    let log_obs: Vec<f64> = (0..ns).map(|_| (random() + TINY).ln()).collect();
    for (name, value) in &cases {
        for avx2 in [None, crate::dsp::kernels::Avx2::detect()] {
            let mut stepped = value.clone();
            let mut work = StepWork::new(n);
            work.log_obs.copy_from_slice(&log_obs);
            let mut pointers = vec![0u16; ns];
            step(
                &mut stepped,
                &mut work,
                &pyin.bands,
                avx2,
                Some(&mut pointers),
            );
            for j in 0..ns {
                let scores = (0..ns).map(|k| value[k] + log_trans[k * ns + j]);
                let best = first_argmax(&scores.collect::<Vec<_>>());
                let top = value[best] + log_trans[best * ns + j];
                assert_eq!(usize::from(pointers[j]), best, "{name}: pointer of {j}");
                assert_eq!(
                    stepped[j].to_bits(),
                    (log_obs[j] + top).to_bits(),
                    "{name}: value of {j}"
                );
            }
        }
    }
}

#[test]
fn avx2_and_portable_steps_agree() {
    let fast = pyin();
    if fast.avx2.is_none() {
        eprintln!("no AVX2 on this CPU: the portable step is compared with itself");
    }
    let mut portable = pyin();
    portable.avx2 = None;
    let (obs, vps) = observe_all(&fast, &signal());
    let n = fast.n_states();
    let mut a = PyinDecoder::new(&fast, 8);
    let mut b = PyinDecoder::new(&portable, 8);
    let mut scratch = fast.scratch();
    for (o, &vp) in obs.chunks_exact(n).zip(&vps) {
        let decided = a.push(&fast, &mut scratch, o, vp);
        assert_eq!(decided, b.push(&portable, &mut scratch, o, vp));
        assert_eq!(a.to_bytes(), b.to_bytes());
    }
}

#[test]
fn difference_as_librosa() {
    // Direct O(n^2) evaluation of librosa's cumulative mean normalised difference, including
    // its d(1) without energy term.
    let pyin = pyin();
    let samples = signal();
    let mut scratch = pyin.scratch();
    let mut out = vec![0.0; pyin.n_states()];
    for start in [3000, 14000, 20000] {
        let frame = &samples[start..start + 512];
        pyin.observe(frame, &mut scratch, &mut out);
        let x: Vec<f64> = frame.iter().map(|&v| f64::from(v)).collect();
        let acf = |tau: usize| (0..512 - tau).map(|m| x[m] * x[m + tau]).sum::<f64>();
        let mut cumulative = 0.0;
        for tau in 1..=pyin.max_period {
            let energy = if tau == 1 {
                0.0
            } else {
                x[..tau].iter().map(|v| v * v).sum()
            };
            let d = 2.0 * (acf(0) - acf(tau)) - energy;
            cumulative += d;
            if tau >= pyin.min_period {
                let expected = d / (cumulative / tau as f64 + TINY);
                let got = scratch.cmnd[tau - pyin.min_period];
                assert!(
                    (got - expected).abs() < 1e-9,
                    "tau {tau}: {got} vs {expected}"
                );
            }
        }
    }
}

#[test]
fn fixed_lag_streaming() {
    let pyin = pyin();
    let (obs, vps) = observe_all(&pyin, &signal());
    let n = pyin.n_states();
    let offline = decode_offline(&pyin, &obs, &vps);
    let run = |lag: usize| {
        let mut decoder = PyinDecoder::new(&pyin, lag);
        let mut scratch = pyin.scratch();
        let mut out = Vec::new();
        for (k, (o, &vp)) in obs.chunks_exact(n).zip(&vps).enumerate() {
            let d = decoder.push(&pyin, &mut scratch, o, vp);
            assert_eq!(d.is_some(), k >= lag);
            out.extend(d);
            assert_eq!(decoder.pending(), (k + 1).min(lag));
        }
        decoder.finish(&pyin, &mut |d| out.push(d));
        assert_eq!(decoder.pending(), 0);
        out
    };
    // A lag at least the stream length is the full Viterbi.
    assert_eq!(run(vps.len()), offline);
    assert_eq!(run(vps.len() + 7), offline);
    // Shorter lags decide every frame once, in order, with its own voiced probability.
    for lag in [0, 1, 5, 20] {
        let out = run(lag);
        assert_eq!(out.len(), vps.len());
        for (d, &vp) in out.iter().zip(&vps) {
            assert_eq!(d.voiced_prob, vp);
        }
        let agree = out.iter().zip(&offline).filter(|(a, b)| a == b).count();
        assert!(
            agree * 10 >= out.len() * 9,
            "lag {lag}: {agree}/{}",
            out.len()
        );
    }
}

#[test]
fn serialised_state_continues_identically() {
    let pyin = pyin();
    let (obs, vps) = observe_all(&pyin, &signal());
    let n = pyin.n_states();
    let mut scratch = pyin.scratch();
    for lag in [0, 1, 12] {
        for cut in [0, 1, 5, 12, 13, 60] {
            let mut whole = PyinDecoder::new(&pyin, lag);
            let mut restored = PyinDecoder::new(&pyin, lag);
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for (k, (o, &vp)) in obs.chunks_exact(n).zip(&vps).enumerate() {
                if k == cut {
                    let bytes = restored.to_bytes();
                    restored = PyinDecoder::from_bytes(&pyin, &bytes).expect("restore");
                    assert_eq!(restored.to_bytes(), bytes);
                    assert_eq!(restored.pending(), whole.pending());
                }
                a.extend(whole.push(&pyin, &mut scratch, o, vp));
                b.extend(restored.push(&pyin, &mut scratch, o, vp));
            }
            whole.finish(&pyin, &mut |d| a.push(d));
            restored.finish(&pyin, &mut |d| b.push(d));
            assert_eq!(a, b, "lag {lag} cut {cut}");
            assert_eq!(whole.value, restored.value);
        }
    }
    // Corrupt or foreign state is refused.
    let mut decoder = PyinDecoder::new(&pyin, 4);
    for (o, &vp) in obs.chunks_exact(n).zip(&vps).take(9) {
        decoder.push(&pyin, &mut scratch, o, vp);
    }
    let bytes = decoder.to_bytes();
    assert_eq!(bytes.len(), 25 + 8 * n + 2 * 3 * n + 8 * 4);
    assert!(PyinDecoder::from_bytes(&pyin, &bytes[..bytes.len() - 1]).is_err());
    let other = Pyin::new(&PyinParams::default(), SR, 512, 128).expect("valid");
    assert!(PyinDecoder::from_bytes(&other, &bytes).is_err());
    let mut bad = bytes.clone();
    bad[0] = 99;
    assert!(PyinDecoder::from_bytes(&pyin, &bad).is_err());
}
