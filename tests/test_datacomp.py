"""DataComp core: shards, streaming, pool, filter signals / LFs, caches, the keep/drop ensemble."""

from __future__ import annotations

import io
import json
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from lightning_ws.datacomp import ensemble as E
from lightning_ws.datacomp import filters as Fl
from lightning_ws.datacomp import pool, shards
from lightning_ws.datacomp.shards import Sample, ShardStream, SharedEpoch
from lightning_ws.errors import ConfigError, DataError


def _jpeg(seed: int, size: int = 32, blank: bool = False) -> bytes:
    rng = np.random.default_rng(seed)
    arr = np.full((size, size, 3), 128, np.uint8) if blank else rng.integers(0, 255, (size, size, 3), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _samples(n: int, ext: str = "jpg") -> list[Sample]:
    out = []
    for i in range(n):
        data = _jpeg(i)
        if ext == "png":
            buf = io.BytesIO()
            Image.open(io.BytesIO(data)).save(buf, "PNG")
            data = buf.getvalue()
        out.append(Sample(image=data, caption=f"a photo number {i}", meta={"uid": shards.make_uid(i), "i": i},
                          ext=ext))
    return out


def _ids(batches) -> list[int]:
    return [i for b in batches for i in b]


def _stream(urls, **kw) -> ShardStream:
    return ShardStream(urls, map_sample=lambda s: s.meta["i"], collate=list, **kw)


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    shards.write_shards(_samples(40), d, samples_per_shard=5)  # 8 shards
    return d


def test_write_read_roundtrip_datacomp_layout(tmp_path):
    src = _samples(7, "png")
    paths = shards.write_shards(src, tmp_path, samples_per_shard=3)
    assert [p.name for p in paths] == ["00000000.tar", "00000001.tar", "00000002.tar"]
    import tarfile

    names = tarfile.open(paths[0]).getnames()
    assert sorted(names[:3]) == ["000000000.json", "000000000.png", "000000000.txt"]
    back = list(shards.iter_shards(tmp_path))
    assert [s.uid for s in back] == [s.uid for s in src]
    assert back[2].image == src[2].image and back[2].caption == src[2].caption and back[2].ext == "png"
    meta = json.loads(tarfile.open(paths[0]).extractfile("000000001.json").read())
    assert meta["uid"] == src[1].uid and meta["caption"] == src[1].caption
    with pytest.raises(ConfigError, match="already holds"):
        shards.write_shards(src, tmp_path)
    assert len(list(shards.iter_shards(tmp_path))) == 7  # nothing overwritten


def test_write_rejects_bad_and_duplicate_uids(tmp_path):
    s = _samples(2)
    s[1].meta["uid"] = s[0].uid
    with pytest.raises(DataError, match="duplicate uid"):
        shards.write_shards(s, tmp_path / "a")
    s[1].meta["uid"] = "xyz"
    with pytest.raises(DataError, match="32 hexadecimal"):
        shards.write_shards(s, tmp_path / "b")
    assert not list((tmp_path / "b").glob("*.part"))


def test_uid_array_sorted_unique_u8u8(tmp_path):
    uids = [shards.make_uid(i) for i in (3, 1, 2, 1)]
    path = shards.save_uid_array(tmp_path / "s.npy", uids)
    arr = shards.load_uid_array(path)
    assert arr.dtype == np.dtype("u8,u8") and len(arr) == 3
    assert shards.array_to_uids(arr) == sorted(set(uids))  # hex order == (hi, lo) order


def test_list_shards_errors(tmp_path):
    with pytest.raises(Exception, match="no .tar shards"):
        shards.list_shards(tmp_path)
    with pytest.raises(Exception, match="not found"):
        shards.list_shards(str(tmp_path / "{00000000..00000002}.tar"))


def test_ranks_split_shards_and_equal_epochs(shard_dir):
    # 8 shards x 5 samples, 3 ranks: shard counts 3/3/2 differ, but every rank yields exactly 4 batches
    per_rank = [list(_stream(shard_dir, batch_size=4, batches_per_epoch=4, rank=r, world_size=3)) for r in range(3)]
    assert [len(b) for b in per_rank] == [4, 4, 4]
    one_pass = [list(_stream(shard_dir, batch_size=5, rank=r, world_size=3)) for r in range(3)]
    seen = [set(_ids(b)) for b in one_pass]
    assert set.union(*seen) == set(range(40)) and sum(len(s) for s in seen) == 40  # disjoint, complete


def test_workers_split_shards(shard_dir):
    ds = _stream(shard_dir, batch_size=5, rank=0, world_size=1)
    got = _ids(DataLoader(ds, batch_size=None, num_workers=2))
    assert sorted(got) == list(range(40))
    ds = _stream(shard_dir, batch_size=2, batches_per_epoch=7, rank=0, world_size=1)
    assert len(list(DataLoader(ds, batch_size=None, num_workers=2))) == 7


def test_too_few_shards_is_an_error(shard_dir):
    with pytest.raises(ConfigError, match="needs at least one shard"):
        list(_stream(shard_dir, batch_size=2, rank=0, world_size=9))


def test_epoch_reaches_workers_and_changes_order(shard_dir):
    epoch = SharedEpoch(0)
    ds = _stream(shard_dir, batch_size=5, batches_per_epoch=8, seed=1, epoch=epoch)  # one pass, shard order
    loader = DataLoader(ds, batch_size=None, num_workers=1)
    e0 = _ids(loader)
    assert _ids(loader) == e0  # same epoch, same order (seeded)
    epoch.set(1)
    e1 = _ids(loader)
    assert e1 != e0 and sorted(e1) == sorted(e0)


def test_resampled_is_seeded(shard_dir):
    a = _ids(_stream(shard_dir, batch_size=4, batches_per_epoch=5, resampled=True, seed=3))
    b = _ids(_stream(shard_dir, batch_size=4, batches_per_epoch=5, resampled=True, seed=3))
    c = _ids(_stream(shard_dir, batch_size=4, batches_per_epoch=5, resampled=True, seed=4))
    assert a == b and a != c


@pytest.mark.parametrize("workers", [0, 2])
def test_skip_batches_resumes_the_stream(shard_dir, workers):
    ds = _stream(shard_dir, batch_size=3, batches_per_epoch=9, shuffle_buffer=6, seed=2)
    full = list(DataLoader(ds, batch_size=None, num_workers=workers))
    ds.skip_batches = 4
    rest = list(DataLoader(ds, batch_size=None, num_workers=workers))
    assert rest == full[4:]


def test_pool_truth_and_shares():
    src = pool.load_cifar10_subset("pool")[:200]
    held = pool.load_cifar10_subset("heldout")
    assert len(held) == 1000 and not {n for n, _, _ in src} & {n for n, _, _ in held}
    p = pool.build_pool(src, pool.NoiseSpec(mismatch=0.2, junk=0.1, blank=0.05, near_duplicate=0.1), seed=0)
    kinds = [s.meta["noise"] for s in p]
    assert len(p) == 200 + 10 + 20
    assert kinds.count("mismatch") == 40 and kinds.count("junk") == 20 and kinds.count("blank") == 10
    assert kinds.count("near_duplicate") == 20
    for s in p:
        assert s.meta["truth_keep"] == (s.meta["noise"] == "clean")
        if s.meta["noise"] == "mismatch":
            assert not any(syn in s.caption for syn in pool._SYNONYMS[pool.CIFAR10_CLASSES[s.meta["label"]]][:1])
    assert [s.uid for s in pool.build_pool(src, seed=0)] == [s.uid for s in pool.build_pool(src, seed=0)]
    images, rows = pool.load_coco_captions()
    assert len(images) == 154 and len(rows) == 770


def test_caption_and_image_signals():
    sig = Fl.caption_signals(["a photo of a cat", "Click here to download", "#$%&*@!", "猫猫猫"])
    assert sig["cap_words"].tolist() == [5, 4, 1, 1]
    assert sig["cap_boilerplate"].tolist() == [0, 1, 0, 0]
    assert sig["cap_alpha"][0] == 1.0 and sig["cap_alpha"][2] == 0.0 and sig["cap_alpha"][3] == 0.0
    blank = Fl.image_signals(Image.open(io.BytesIO(_jpeg(0, blank=True))))
    busy = Fl.image_signals(Image.open(io.BytesIO(_jpeg(0))))
    assert blank["img_std"] < 2 < busy["img_std"] and busy["img_width"] == 32


def test_duplicate_groups_banded_equals_brute_force():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, 60, dtype=np.int64)
    flips = rng.integers(0, 64, (60, 3))
    near = base.copy().view(np.uint64)
    for i in range(60):
        for b in flips[i][: i % 4]:
            near[i] ^= np.uint64(1) << np.uint64(b)
    h = np.concatenate([base, near.view(np.int64)])
    groups = Fl.duplicate_groups(h, max_distance=3)
    d = Fl.hamming64(h[:, None], h[None, :])
    # brute force transitive closure
    parent = list(range(len(h)))

    def find(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(d <= 3)):
        a, b = find(i), find(j)
        if a != b:
            parent[max(a, b)] = min(a, b)
    assert groups.tolist() == [find(i) for i in range(len(h))]
    assert (groups[60:] == np.arange(60)).all()


def test_phash_finds_reencoded_copies():
    src = pool.load_cifar10_subset("pool")[:50]
    p = pool.build_pool(src, pool.NoiseSpec(mismatch=0, junk=0, blank=0, near_duplicate=0.2), seed=0)
    imgs = [shards.decode_image(s.image) for s in p]
    h = np.array([Fl.image_signals(im)["img_phash"] for im in imgs], np.int64)
    uids = [s.uid for s in p]
    hi, lo = Fl._uid_halves(uids)
    votes = Fl.duplicate_lf()({"img_phash": h, "uid_hi": hi, "uid_lo": lo})
    truth = np.array([s.meta["truth_keep"] for s in p])
    assert (votes[~truth] == Fl.DROP).mean() >= 0.9
    assert (votes[truth] != Fl.DROP).all()


def test_lf_checks_columns_and_votes():
    lf = Fl.clip_score_lf(0.3, 0.3)
    with pytest.raises(DataError, match="needs signal column"):
        lf({"cap_words": np.ones(3)})
    x = np.arange(10, dtype=np.float32)
    v = lf({"clip_score": x})
    assert v.tolist() == [0, 0, 0, -1, -1, -1, -1, 1, 1, 1]
    with pytest.raises(ConfigError):
        Fl.clip_score_lf(0.8, 0.5)


def test_detector_signals_tiny_owlvit():
    det = Fl.OwlDetector(Fl.tiny_owlvit(seed=0), top_k=4)
    imgs = torch.stack([det.preprocess(Image.open(io.BytesIO(_jpeg(i)))) for i in range(3)])
    out = det(imgs, ["a cat", "a dog on the grass", "junk"])
    assert out["det_top_logits"].shape == (3, 4) and out["det_top_areas"].shape == (3, 4)
    assert (out["det_top_logits"][:, :-1] >= out["det_top_logits"][:, 1:]).all()
    assert ((out["det_top_areas"] >= 0) & (out["det_top_areas"] <= 1)).all()
    # rule (d): one extra query per noun phrase in the same forward; NaN where a caption has fewer phrases
    ph = out["det_phrase_logits"]
    assert ph.shape == (3, 4) and torch.isnan(ph[0, 1:]).all() and torch.isfinite(ph[1, :2]).all()
    assert torch.isnan(ph[1, 2:]).all() and torch.isfinite(ph[2, 0]) and torch.isnan(ph[2, 1:]).all()
    sig = {k: v.numpy() for k, v in out.items()}
    for lf in (Fl.detector_grounded_lf(0.5), Fl.detector_count_lf(0.5), Fl.detector_area_lf(0.5),
               Fl.detector_phrase_lf(0.5)):
        assert lf(sig).shape == (3,)
    # each phrase query is scored like the caption query: a caption that is one phrase grounds it identically
    single = det(imgs[:1], ["cat"])
    assert single["det_phrase_logits"][0, 0] == pytest.approx(float(single["det_top_logits"][0, 0]), abs=1e-5)
    assert "det_phrase_logits" not in Fl.OwlDetector(det.model, max_phrases=0)(imgs[:1], ["a cat"])
    with pytest.raises(ConfigError, match="local folder"):
        Fl.OwlDetector("google/owlvit-base-patch32")


def _planted(n: int = 4000, seed: int = 0):
    """Five conditionally independent two-sided filters with known accuracies over a planted keep set."""
    rng = np.random.default_rng(seed)
    good = rng.random(n) < 0.65
    accs = [0.9, 0.8, 0.75, 0.7, 0.85]
    cover = [0.9, 0.7, 0.8, 0.9, 0.6]
    votes = []
    for a, c in zip(accs, cover):
        right = rng.random(n) < a
        v = np.where(right, good, ~good).astype(np.int8)
        votes.append(np.where(rng.random(n) < c, v, Fl.ABSTAIN).astype(np.int8))
    uids = [shards.make_uid("p", i) for i in range(n)]
    hi, lo = Fl._uid_halves(uids)
    sig = {f"v{j}": v for j, v in enumerate(votes)} | {"uid_hi": hi, "uid_lo": lo}
    lfs = [Fl.FilterLF(f"f{j}", (lambda s, j=j: s[f"v{j}"]), (f"v{j}",)) for j in range(len(votes))]
    return sig, good, lfs


@pytest.mark.parametrize("label_model", ["triplet", "moment_matching", "dawid_skene"])
def test_ensemble_recovers_planted_keep_set(label_model):
    sig, good, lfs = _planted()
    res = E.FilterEnsemble(lfs, label_model=label_model).run(sig)
    ens = E.keep_metrics(res.keep, good)
    singles = [E.keep_metrics(E.single_filter_keep(lf(sig)), good)["f1"] for lf in lfs]
    assert ens["f1"] > max(singles) + 0.02, (label_model, ens, singles)
    assert (res.keep == good).mean() > 0.9 and not res.report["sign_flipped"]
    assert abs(res.report["class_prior_keep"] - 0.65) < 0.05
    assert res.report["n_kept"] == int(res.keep.sum())


def test_duplicated_filters_are_deduplicated(tmp_path):
    sig, good, lfs = _planted(seed=2)
    copies = [Fl.FilterLF(f"f0_copy{i}", lfs[0].fn, lfs[0].needs) for i in range(3)]
    base = E.FilterEnsemble(lfs, label_model="triplet").run(sig)
    dup = E.FilterEnsemble(lfs + copies, label_model="triplet").run(sig)
    assert dup.report["lfs_deduplicated"] == ["f0_copy0", "f0_copy1", "f0_copy2"]
    np.testing.assert_allclose(dup.p_keep, base.p_keep)
    path = E.save_submission(tmp_path / "uids.npy", base)
    arr = shards.load_uid_array(path)
    assert len(arr) == base.keep.sum() and (np.sort(arr) == arr).all()


def test_selection_rules_and_errors():
    ens = E.FilterEnsemble([Fl.clip_score_lf()], top_fraction=0.25)
    p = np.array([0.9, 0.1, 0.5, 0.9])
    assert ens.select(p, ["b", "a", "c", "a"]).tolist() == [False, False, False, True]  # tie broken by uid
    assert E.FilterEnsemble([Fl.clip_score_lf()], threshold=0.5).select(p, list("abcd")).tolist() == [
        True, False, True, True]
    with pytest.raises(ConfigError):
        E.FilterEnsemble([Fl.clip_score_lf()], threshold=0.5, top_fraction=0.3)
    with pytest.raises(ConfigError):
        E.FilterEnsemble([])


def test_filtered_shards_keep_only_selected(tmp_path):
    src = _samples(12)
    shards.write_shards(src, tmp_path / "in", samples_per_shard=5)
    keep = {s.uid for s in src[::3]}
    paths, n = E.write_filtered_shards(tmp_path / "in", tmp_path / "out", keep, samples_per_shard=2)
    assert n == 4 and len(paths) == 2
    assert {s.uid for s in shards.iter_shards(tmp_path / "out")} == keep


def test_keep_filter_that_keeps_nothing_fails_instead_of_hanging(shard_dir):
    ds = _stream(shard_dir, batch_size=2, batches_per_epoch=3, keep=lambda s: False)
    with pytest.raises(DataError, match="no sample passes the keep filter"):
        list(ds)


def _failure_mode_pool(n: int = 3000, seed: int = 0):
    """Bad samples of three disjoint kinds, each caught by one rule that votes drop on it and keep elsewhere (as the
    DataComp-style rules do), a weak two-sided quality score, and a size rule that never fires."""
    rng = np.random.default_rng(seed)
    kind = rng.choice(4, size=n, p=[0.7, 0.1, 0.1, 0.1])  # 0 good, 1-3 a failure mode
    good = kind == 0
    cols = {f"bad{m}": (kind == m).astype(np.float32) for m in (1, 2, 3)}
    cols["score"] = (good + rng.normal(0, 1.2, n)).astype(np.float32)
    cols["side"] = np.full(n, 64.0, np.float32)
    uids = [shards.make_uid("fm", i) for i in range(n)]
    cols["uid_hi"], cols["uid_lo"] = Fl._uid_halves(uids)
    lfs = [Fl.FilterLF(f"rule{m}", (lambda s, m=m: np.where(s[f"bad{m}"] > 0, Fl.DROP, Fl.KEEP)), (f"bad{m}",),
                       mode=f"mode{m}") for m in (1, 2, 3)]
    lfs.append(Fl.FilterLF("size", lambda s: np.where(s["side"] < 16, Fl.DROP, Fl.KEEP), ("side",), mode="size"))
    lfs.append(Fl.clip_score_lf(0.3, 0.3, column="score"))
    return cols, good, lfs


def test_failure_mode_latent_beats_binary_and_every_single_filter():
    sig, good, lfs = _failure_mode_pool()
    fm = E.FilterEnsemble(lfs).run(sig)
    binary = E.FilterEnsemble(lfs, latent="binary").run(sig)
    f1 = E.keep_metrics(fm.keep, good)["f1"]
    singles = {lf.name: E.keep_metrics(E.single_filter_keep(lf(sig)), good)["f1"] for lf in lfs}
    assert f1 > max(singles.values()) + 0.02, (f1, singles)
    assert f1 > E.keep_metrics(binary.keep, good)["f1"] + 0.02
    assert fm.report["lfs_constant"] == ["size"]  # votes keep everywhere: left out of the fit
    assert set(fm.report["failure_modes"]) == {"mode1", "mode2", "mode3", "quality"}
    assert abs(fm.report["class_prior_keep"] - good.mean()) < 0.08
    with pytest.raises(ConfigError, match="latent"):
        E.FilterEnsemble(lfs, latent="ternary")


def test_noun_phrases_heuristic():
    assert Fl.noun_phrases("a photo of a tabby cat on the grass") == ["tabby cat", "grass"]
    assert Fl.noun_phrases("A dog, a dog and a red ball!") == ["dog", "red ball"]
    assert Fl.noun_phrases("Click here to download IMG_1234.JPG", 2) == ["click", "download img"]
    assert Fl.noun_phrases("#$%& 1234") == [] and Fl.noun_phrases("") == []
    assert len(Fl.noun_phrases("cat dog, bird; frog: horse . ship", 3)) == 3


def test_detector_phrase_rule_d_votes():
    logit = lambda p: float(np.log(p / (1 - p)))
    nan = float("nan")
    x = np.array([[logit(0.9), logit(0.8), nan, nan],      # 2/2 grounded -> keep
                  [logit(0.9), logit(0.01), nan, nan],     # 1/2 >= 0.5 -> keep
                  [logit(0.9), logit(0.01), logit(0.02), nan],  # 1/3 < 0.5 -> drop
                  [nan, nan, nan, nan],                    # no noun phrase -> abstain
                  [logit(0.05), nan, nan, nan]], np.float32)  # 0/1 -> drop
    lf = Fl.detector_phrase_lf(tau=0.5, min_fraction=0.5)
    assert lf({"det_phrase_logits": x}).tolist() == [1, 1, 0, -1, 0]
    assert Fl.detector_phrase_lf(tau=0.5, min_fraction=1.0)({"det_phrase_logits": x}).tolist() == [1, 0, 0, -1, 0]
    assert lf.mode == "grounding" and "det_phrase_logits" in lf.needs
    with pytest.raises(ConfigError):
        Fl.detector_phrase_lf(min_fraction=0.0)
    names = [f.name for f in Fl.default_lfs(["cap_words", "det_top_logits", "det_top_areas", "det_phrase_logits"])]
    assert "det_phrases[0.1,0.5]" in names and "det_rank[top0.3,bottom0.3]" in names


def test_detector_rank_rule_e_votes():
    top = np.array([[3.0, 1.0], [2.0, 0.0], [1.0, 0.5], [0.0, -1.0], [-1.0, -2.0]], np.float32)
    assert Fl.detector_rank_lf(0.4, 0.4)({"det_top_logits": top}).tolist() == [1, 1, -1, 0, 0]
    with pytest.raises(ConfigError):
        Fl.detector_rank_lf(0.8, 0.5)


def test_shuffle_buffer_larger_than_a_pass_does_not_repeat_samples_within_an_epoch(shard_dir):
    """A buffer bigger than the data is flushed at the end of each pass: an epoch that is one pass is a permutation
    (before, the buffer filled from the following passes and an epoch had repeats and gaps)."""
    ds = _stream(shard_dir, batch_size=8, batches_per_epoch=5, shuffle_buffer=1000, seed=4)
    seen = [i for b in ds for i in b]
    assert sorted(seen) == list(range(40)) and seen != list(range(40))
    ds.set_epoch(1)
    assert sorted(i for b in ds for i in b) == list(range(40))
    # longer epochs cross into the next pass: every pass is complete before the next begins
    long = [i for b in _stream(shard_dir, batch_size=8, batches_per_epoch=10, shuffle_buffer=1000, seed=4) for i in b]
    assert sorted(long[:40]) == sorted(long[40:]) == list(range(40))
