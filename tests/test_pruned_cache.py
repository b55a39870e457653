"""The physically pruned K/V cache: order-preserving packing, per-row lengths, append with drops."""

from __future__ import annotations

import torch

from prunex.prune.pruned_cache import LayerCache
from prunex.tensors import pack_kept


def test_pack_kept_keeps_order_and_pads():
    """Kept indices come first in their original order; rows with fewer kept entries are padded (valid False)."""
    keep = torch.tensor([[True, False, True, True, False], [False, False, False, True, False]])
    index, valid = pack_kept(keep)
    assert index.shape == valid.shape == (2, 3)
    assert index[0].tolist() == [0, 2, 3]
    assert index[1, 0].item() == 3
    assert valid.tolist() == [[True, True, True], [True, False, False]]
    assert not keep[1, index[1, 1:]].any()  # the padding points at dropped entries


def test_pack_kept_none_kept():
    """No row keeps anything: width 1, nothing valid."""
    index, valid = pack_kept(torch.zeros(3, 4, dtype=torch.bool))
    assert index.shape == (3, 1)
    assert not valid.any()


def _cache(lengths: list[int], width: int) -> LayerCache:
    """A cache of B rows, KV=2 heads, D=3, whose key values encode the logical position (k = position)."""
    B = len(lengths)
    valid = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    positions = torch.arange(width).expand(B, width).clone()
    k = positions[:, None, :, None].float().expand(B, 2, width, 3).clone()
    return LayerCache(k=k, v=-k, state=positions[..., None].float() * 10, positions=positions, valid=valid)


def test_append_drops_and_appends_per_row():
    """append() removes the entries not kept, adds the new token at the end of each row's valid prefix."""
    cache = _cache([4, 2], width=4)
    assert cache.lengths.tolist() == [4, 2]
    keep = torch.tensor([[True, False, True, False], [False, True, True, True]])  # row 1: entries 2, 3 padding
    new_pos = torch.tensor([4, 2])
    new_k = new_pos[:, None, None, None].float().expand(2, 2, 1, 3)
    out = cache.append(keep, new_k, -new_k, new_pos[:, None, None].float() * 10, new_pos)

    assert out.lengths.tolist() == [3, 2]
    assert out.k.shape == (2, 2, 3, 3)
    row0 = out.positions[0][out.valid[0]].tolist()
    row1 = out.positions[1][out.valid[1]].tolist()
    assert row0 == [0, 2, 4]
    assert row1 == [1, 2]  # old entry 1 kept, padding ignored although "kept", new token at position 2
    for b, held in enumerate([row0, row1]):
        n = len(held)
        assert out.k[b, :, :n, 0].tolist() == [[float(p) for p in held]] * 2
        assert torch.equal(out.v[b, :, :n], -out.k[b, :, :n])
        assert out.state[b, :n, 0].tolist() == [10.0 * p for p in held]


def test_append_keeps_nothing_old():
    """Dropping every cached entry leaves just the new token."""
    cache = _cache([3, 3], width=3)
    new_pos = torch.tensor([3, 3])
    new_k = torch.full((2, 2, 1, 3), 3.0)
    out = cache.append(torch.zeros(2, 3, dtype=torch.bool), new_k, -new_k, torch.zeros(2, 1, 1), new_pos)
    assert out.k.shape[2] == 1 and out.lengths.tolist() == [1, 1]
    assert out.positions[:, 0].tolist() == [3, 3]
