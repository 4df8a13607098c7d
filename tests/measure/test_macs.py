import torch
import torch.nn as nn

from slimkit.measure.macs import count_macs


def test_conv_linear_stack_matches_hand_count():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),            # 8x8 output: 8*8 * 8 * 3*3*3 = 13,824
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),  # 4x4 output: 4*4 * 16 * 8*3*3 = 18,432
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 10),                 # 256 * 10 = 2,560
    )
    assert count_macs(model, (torch.randn(1, 3, 8, 8),)) == 13_824 + 18_432 + 2_560


def test_depthwise_and_batch_scale():
    dw = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)  # 10*10 * 16 * 9 = 14,400
    assert count_macs(dw, (torch.randn(1, 16, 10, 10),)) == 14_400
    assert count_macs(dw, (torch.randn(4, 16, 10, 10),)) == 4 * 14_400


def test_attention_matmuls_are_counted():
    attn = nn.MultiheadAttention(32, 4, batch_first=True)
    x = torch.randn(1, 10, 32)
    macs = count_macs(_SelfAttention(attn), (x,))
    # in-projection 10*32*96 + scores 10*10*32 + weighted sum 10*10*32 + out-projection 10*32*32
    assert macs == 10 * 32 * 96 + 2 * 10 * 10 * 32 + 10 * 32 * 32


class _SelfAttention(nn.Module):
    def __init__(self, attn):
        super().__init__()
        self.attn = attn

    def forward(self, x):
        return self.attn(x, x, x, need_weights=False)[0]
