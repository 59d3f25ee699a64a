import numpy as np
import torch

from k2ssl_fairseq.data.frames import WAV2VEC2_CONV_LAYERS, conv_frames, conv_stride, label_frames, receptive_field


def test_conv_frames_matches_closed_form_for_every_type():
    n = np.arange(0, 5000)
    expected = np.where(n >= 400, 1 + (n - 400) // 320, 0)
    assert np.array_equal(conv_frames(n), expected)
    assert torch.equal(conv_frames(torch.from_numpy(n)), torch.from_numpy(expected))
    assert [conv_frames(int(x)) for x in (399, 400, 719, 720, 59219)] == [0, 1, 1, 2, 184]
    assert conv_stride() == 320


def test_label_frames_at_50_and_100_hz():
    assert label_frames(59219, 50) == 184
    # Kaldi-style 25 ms / 10 ms framing at 100 Hz: 1 + (n - 400) // 160.
    assert label_frames(16000, 100) == 1 + (16000 - 400) // 160
    assert np.array_equal(label_frames(np.array([16000, 32000]), 100), 1 + (np.array([16000, 32000]) - 400) // 160)


def test_receptive_field_is_the_fewest_samples_giving_a_frame():
    for layers in (WAV2VEC2_CONV_LAYERS, [(64, 10, 5)] + [(64, 3, 2)] * 4 + [(64, 2, 2)] * 2, [(8, 3, 3), (8, 5, 1)]):
        field = receptive_field(layers)
        assert conv_frames(field, layers) == 1 and conv_frames(field - 1, layers) == 0
    assert receptive_field() == 400
