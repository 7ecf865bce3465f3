"""Constants of the VGGish recipe (AudioSet VGGish), each named once as the recipe names it.

Everything else in ``extractors`` imports these; nothing repeats the numbers.
"""

from __future__ import annotations

# Architecture.
NUM_FRAMES = 96  # Frames in one input log-mel patch (one example).
NUM_BANDS = 64  # Mel bands in one input patch.
EMBEDDING_SIZE = 128  # Size of the embedding layer.

# Feature and example generation.
SAMPLE_RATE = 16000  # Hz, mono.
STFT_WINDOW_LENGTH_SECONDS = 0.025  # Periodic Hann window.
STFT_HOP_LENGTH_SECONDS = 0.010
NUM_MEL_BINS = NUM_BANDS
MEL_MIN_HZ = 125
MEL_MAX_HZ = 7500
LOG_OFFSET = 0.01  # log(mel + LOG_OFFSET), the recipe's stabilised log.
EXAMPLE_WINDOW_SECONDS = 0.96  # Each example holds 96 frames of 10 ms ...
EXAMPLE_HOP_SECONDS = 0.96  # ... with no overlap.

# The same numbers in samples and frames, as the recipe derives them.
STFT_WINDOW_LENGTH_SAMPLES = int(round(SAMPLE_RATE * STFT_WINDOW_LENGTH_SECONDS))  # 400
STFT_HOP_LENGTH_SAMPLES = int(round(SAMPLE_RATE * STFT_HOP_LENGTH_SECONDS))  # 160
FFT_LENGTH = 1 << (STFT_WINDOW_LENGTH_SAMPLES - 1).bit_length()  # 512, next power of two
NUM_SPECTROGRAM_BINS = FFT_LENGTH // 2 + 1  # 257
EXAMPLE_WINDOW_FRAMES = int(round(EXAMPLE_WINDOW_SECONDS / STFT_HOP_LENGTH_SECONDS))  # 96
EXAMPLE_HOP_FRAMES = int(round(EXAMPLE_HOP_SECONDS / STFT_HOP_LENGTH_SECONDS))  # 96

# This project's grid, not the recipe's: one 0.96 s example per second of the clip, starting on
# the second (example k covers [k, k + 0.96) s), so audio row k and visual frame k (sampled at
# k + 0.5 s) describe the same second whatever the clip length; the last 0.04 s of each second
# is not heard. (The recipe's 0.96 s hop drifts: 1,875 examples for 1,800 s.) AVE's released
# features are the same: 10 examples for a 10-s clip.
GRID_HOP_SECONDS = 1.0
GRID_HOP_FRAMES = int(round(GRID_HOP_SECONDS / STFT_HOP_LENGTH_SECONDS))  # 100

# HTK mel scale: mel = MEL_HIGH_FREQUENCY_Q * ln(1 + hz / MEL_BREAK_FREQUENCY_HERTZ).
MEL_BREAK_FREQUENCY_HERTZ = 700.0
MEL_HIGH_FREQUENCY_Q = 1127.0

# Embedding post-processing (PCA with whitening, then 8-bit quantisation).
PCA_EIGEN_VECTORS_NAME = "pca_eigen_vectors"
PCA_MEANS_NAME = "pca_means"
QUANTIZE_MIN_VAL = -2.0
QUANTIZE_MAX_VAL = +2.0

# Published PyTorch port of the weights (harritaylor/torchvggish, release v0.1).
VGGISH_WEIGHTS_FILE = "vggish-10086976.pth"
VGGISH_WEIGHTS_URL = "https://github.com/harritaylor/torchvggish/releases/download/v0.1/" + VGGISH_WEIGHTS_FILE
PCA_PARAMS_FILE = "vggish_pca_params-970ea276.pth"
PCA_PARAMS_URL = "https://github.com/harritaylor/torchvggish/releases/download/v0.1/" + PCA_PARAMS_FILE
