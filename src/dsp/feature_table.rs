//! The feature table: every feature specflow computes, in one place.
//!
//! [`FEATURES`] lists each feature once, in canonical output order, with its name (in
//! configuration and output records), its width (values per frame) and what it needs computed
//! first (the spectrum, a filter bank, the pitch tracker, the previous frame's spectrum, …).
//! Everything else derives from it: [`FeatureName::ALL`], names and parsing, scalar / vector
//! storage slots of `FrameBatch`, vector widths, and which plans and buffers
//! `FeatureExtractor` builds.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// A feature specflow can compute for each frame. `feature as usize` is its row in
/// [`FEATURES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FeatureName {
    /// Root mean square of the raw (unwindowed) frame.
    Rms,
    /// Zero-crossing rate: crossings per sample in the frame.
    Zcr,
    /// Magnitude-weighted mean frequency in Hz.
    SpectralCentroid,
    /// Magnitude-weighted standard deviation of frequency around the centroid, in Hz.
    SpectralBandwidth,
    /// Frequency below which `rolloff_percent` of the magnitude lies, in Hz.
    SpectralRolloff,
    /// Geometric over arithmetic mean of the power spectrum.
    SpectralFlatness,
    /// Half-wave rectified L2 change of the magnitude spectrum since the previous frame.
    SpectralFlux,
    /// Frequency of the strongest spectral peak in Hz, refined by interpolation.
    DominantFrequency,
    /// Fundamental frequency in Hz from YIN or pYIN (`pitch_method`; null when unvoiced); also
    /// emits `voiced`, and with pYIN `voiced_prob`.
    F0,
    /// Mel power spectrum (`n_mels` values).
    Mel,
    /// Mel-frequency cepstral coefficients (`n_mfcc` values).
    Mfcc,
    /// Chroma vector (12 values, max-normalised).
    Chroma,
    /// Mean-square energy per configured band.
    BandEnergy,
    /// Frame level in dB relative to full scale, from `rms`.
    LoudnessDbfs,
}

/// How many values a feature has per frame; `Width::resolve` (defined in `config`, next to
/// `DspConfig`) gives the count under a configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Width {
    /// One value per frame (a scalar feature).
    One,
    /// `dsp.n_mels` values.
    NMels,
    /// `dsp.n_mfcc` values.
    NMfcc,
    /// One value per pitch class ([`N_CHROMA`](super::chroma::N_CHROMA)).
    Chroma,
    /// One value per configured band (`dsp.bands`).
    Bands,
}

impl Width {
    /// True for a vector feature (anything but [`Width::One`]).
    pub const fn is_vector(self) -> bool {
        !matches!(self, Width::One)
    }
}

/// A set of intermediate computations a feature needs before its own formula.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Needs(u16);

impl Needs {
    /// Nothing beyond the raw frame.
    pub const NONE: Needs = Needs(0);
    /// The frame's RMS.
    pub const RMS: Needs = Needs(1 << 0);
    /// The windowed FFT: magnitude and power spectrum.
    pub const SPECTRUM: Needs = Needs(1 << 1);
    /// The spectral centroid (shared by centroid and bandwidth).
    pub const CENTROID: Needs = Needs(1 << 2);
    /// The mel filter bank.
    pub const MEL_BANK: Needs = Needs(1 << 3);
    /// The DCT-II matrix from mel bands to cepstral coefficients.
    pub const DCT: Needs = Needs(1 << 4);
    /// The chroma filter bank.
    pub const CHROMA_BANK: Needs = Needs(1 << 5);
    /// The FFT bin ranges of the configured bands.
    pub const BAND_BINS: Needs = Needs(1 << 6);
    /// The pitch tracker (YIN or pYIN).
    pub const PITCH: Needs = Needs(1 << 7);
    /// The previous frame's magnitude spectrum, carried in the stream's state.
    pub const PREVIOUS_SPECTRUM: Needs = Needs(1 << 8);
    /// The sum of the magnitude spectrum (shared by centroid, bandwidth and rolloff).
    pub const MAGNITUDE_TOTAL: Needs = Needs(1 << 9);

    /// Both sets.
    pub const fn union(self, other: Needs) -> Needs {
        Needs(self.0 | other.0)
    }

    /// True when every computation of `other` is in this set.
    pub const fn contains(self, other: Needs) -> bool {
        self.0 & other.0 == other.0
    }

    /// What computing every feature of `features` needs.
    pub fn of(features: &[FeatureName]) -> Needs {
        features
            .iter()
            .fold(Needs::NONE, |needs, f| needs.union(f.spec().needs))
    }
}

/// One row of the feature table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureSpec {
    /// The feature.
    pub feature: FeatureName,
    /// Its name in configuration (`dsp.features`) and its column / key in output records.
    pub name: &'static str,
    /// Values per frame.
    pub width: Width,
    /// What must be computed before it.
    pub needs: Needs,
}

const fn spec(feature: FeatureName, name: &'static str, width: Width, needs: Needs) -> FeatureSpec {
    FeatureSpec {
        feature,
        name,
        width,
        needs,
    }
}

/// Spectrum and something else.
const fn spectrum_and(other: Needs) -> Needs {
    Needs::SPECTRUM.union(other)
}

/// Every feature, in canonical output order (row `i` is the feature with discriminant `i`).
pub const FEATURES: &[FeatureSpec] = &[
    spec(FeatureName::Rms, "rms", Width::One, Needs::RMS),
    spec(FeatureName::Zcr, "zcr", Width::One, Needs::NONE),
    spec(
        FeatureName::SpectralCentroid,
        "spectral_centroid",
        Width::One,
        spectrum_and(Needs::CENTROID.union(Needs::MAGNITUDE_TOTAL)),
    ),
    spec(
        FeatureName::SpectralBandwidth,
        "spectral_bandwidth",
        Width::One,
        spectrum_and(Needs::CENTROID.union(Needs::MAGNITUDE_TOTAL)),
    ),
    spec(
        FeatureName::SpectralRolloff,
        "spectral_rolloff",
        Width::One,
        spectrum_and(Needs::MAGNITUDE_TOTAL),
    ),
    spec(
        FeatureName::SpectralFlatness,
        "spectral_flatness",
        Width::One,
        Needs::SPECTRUM,
    ),
    spec(
        FeatureName::SpectralFlux,
        "spectral_flux",
        Width::One,
        spectrum_and(Needs::PREVIOUS_SPECTRUM),
    ),
    spec(
        FeatureName::DominantFrequency,
        "dominant_frequency",
        Width::One,
        Needs::SPECTRUM,
    ),
    spec(FeatureName::F0, "f0", Width::One, Needs::PITCH),
    spec(
        FeatureName::Mel,
        "mel",
        Width::NMels,
        spectrum_and(Needs::MEL_BANK),
    ),
    spec(
        FeatureName::Mfcc,
        "mfcc",
        Width::NMfcc,
        spectrum_and(Needs::MEL_BANK.union(Needs::DCT)),
    ),
    spec(
        FeatureName::Chroma,
        "chroma",
        Width::Chroma,
        spectrum_and(Needs::CHROMA_BANK),
    ),
    spec(
        FeatureName::BandEnergy,
        "band_energy",
        Width::Bands,
        spectrum_and(Needs::BAND_BINS),
    ),
    spec(
        FeatureName::LoudnessDbfs,
        "loudness_dbfs",
        Width::One,
        Needs::RMS,
    ),
];

/// Number of features.
pub const N_FEATURES: usize = FEATURES.len();

/// Number of scalar features (storage columns of one value per frame).
pub(crate) const N_SCALARS: usize = count_kind(false);

/// Number of vector features (storage columns of `width` values per frame).
pub(crate) const N_VECTORS: usize = count_kind(true);

const fn count_kind(vector: bool) -> usize {
    let mut count = 0;
    let mut i = 0;
    while i < N_FEATURES {
        if FEATURES[i].width.is_vector() == vector {
            count += 1;
        }
        i += 1;
    }
    count
}

/// Storage slot of each feature among those of its kind (scalar or vector), in table order.
const SLOTS: [usize; N_FEATURES] = {
    let mut slots = [0; N_FEATURES];
    let (mut scalars, mut vectors) = (0, 0);
    let mut i = 0;
    while i < N_FEATURES {
        // The table is indexed by discriminant.
        assert!(FEATURES[i].feature as usize == i);
        if FEATURES[i].width.is_vector() {
            slots[i] = vectors;
            vectors += 1;
        } else {
            slots[i] = scalars;
            scalars += 1;
        }
        i += 1;
    }
    slots
};

impl FeatureName {
    /// Every feature, in the canonical output order (the order of [`FEATURES`]).
    pub const ALL: [FeatureName; N_FEATURES] = {
        let mut all = [FeatureName::Rms; N_FEATURES];
        let mut i = 0;
        while i < N_FEATURES {
            all[i] = FEATURES[i].feature;
            i += 1;
        }
        all
    };

    /// The feature's row of [`FEATURES`].
    pub const fn spec(self) -> &'static FeatureSpec {
        &FEATURES[self as usize]
    }

    /// The name used in configuration and in output records.
    pub const fn as_str(self) -> &'static str {
        self.spec().name
    }

    /// Values per frame.
    pub const fn width(self) -> Width {
        self.spec().width
    }

    /// True for features with one value per frame (`f0` included), false for vectors.
    pub const fn is_scalar(self) -> bool {
        !self.width().is_vector()
    }

    /// True when the feature is computed from the magnitude spectrum (needs the FFT).
    pub const fn needs_spectrum(self) -> bool {
        self.spec().needs.contains(Needs::SPECTRUM)
    }

    /// Storage slot among the scalar features, `None` for a vector feature.
    pub(crate) const fn scalar_slot(self) -> Option<usize> {
        if self.is_scalar() {
            Some(SLOTS[self as usize])
        } else {
            None
        }
    }

    /// Storage slot among the vector features, `None` for a scalar feature.
    pub(crate) const fn vector_slot(self) -> Option<usize> {
        if self.is_scalar() {
            None
        } else {
            Some(SLOTS[self as usize])
        }
    }
}

impl fmt::Display for FeatureName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A feature name that is not in [`FEATURES`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown feature {0:?}")]
pub struct UnknownFeature(pub String);

impl FromStr for FeatureName {
    type Err = UnknownFeature;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FEATURES
            .iter()
            .find(|spec| spec.name == s)
            .map(|spec| spec.feature)
            .ok_or_else(|| UnknownFeature(s.to_owned()))
    }
}

impl Serialize for FeatureName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_rows_follow_the_enum() {
        for (i, spec) in FEATURES.iter().enumerate() {
            assert_eq!(spec.feature as usize, i, "{}", spec.name);
            assert_eq!(FeatureName::ALL[i], spec.feature);
        }
        let mut names: Vec<&str> = FEATURES.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), N_FEATURES, "feature names are unique");
    }

    #[test]
    fn storage_slots_keep_the_checkpoint_layout() {
        // Checkpoints store scalar and vector columns by slot: this order must not change.
        let scalars: Vec<&str> = FeatureName::ALL
            .iter()
            .filter(|f| f.is_scalar())
            .map(|f| f.as_str())
            .collect();
        assert_eq!(
            scalars,
            [
                "rms",
                "zcr",
                "spectral_centroid",
                "spectral_bandwidth",
                "spectral_rolloff",
                "spectral_flatness",
                "spectral_flux",
                "dominant_frequency",
                "f0",
                "loudness_dbfs"
            ]
        );
        let vectors: Vec<&str> = FeatureName::ALL
            .iter()
            .filter(|f| !f.is_scalar())
            .map(|f| f.as_str())
            .collect();
        assert_eq!(vectors, ["mel", "mfcc", "chroma", "band_energy"]);
        for (slot, name) in scalars.iter().enumerate() {
            let f: FeatureName = name.parse().unwrap();
            assert_eq!(f.scalar_slot(), Some(slot));
            assert_eq!(f.vector_slot(), None);
        }
        for (slot, name) in vectors.iter().enumerate() {
            let f: FeatureName = name.parse().unwrap();
            assert_eq!(f.vector_slot(), Some(slot));
            assert_eq!(f.scalar_slot(), None);
        }
        assert_eq!((N_SCALARS, N_VECTORS), (10, 4));
    }

    #[test]
    fn needs_of_a_selection() {
        let needs = Needs::of(&[FeatureName::Mfcc, FeatureName::LoudnessDbfs]);
        for need in [Needs::SPECTRUM, Needs::MEL_BANK, Needs::DCT, Needs::RMS] {
            assert!(needs.contains(need), "{need:?}");
        }
        for need in [
            Needs::CHROMA_BANK,
            Needs::PITCH,
            Needs::PREVIOUS_SPECTRUM,
            Needs::CENTROID,
        ] {
            assert!(!needs.contains(need), "{need:?}");
        }
        assert_eq!(Needs::of(&[FeatureName::Zcr]), Needs::NONE);
        assert!(!FeatureName::F0.needs_spectrum());
        assert!(FeatureName::SpectralFlux.needs_spectrum());
    }
}
