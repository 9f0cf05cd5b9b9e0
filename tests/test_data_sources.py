"""Dataset sources: the same samples give the same tensors from LLaVA JSON + folder, parquet bytes and tar shards;
streaming them across 2 ranks x 2 dataloader workers sees every sample once and resumes exactly."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from llavakit.data.check import check_data
from llavakit.data.dataset import LlavaDataset
from llavakit.data.records import DatasetSpec
from llavakit.data.sources import source_of
from llavakit.data.streaming import StreamingShardDataset
from llavakit.errors import ConfigError, DataError
from llavakit.processing.processor import LlavaKitProcessor
from llavakit.tiny import tiny_llava_config


@pytest.fixture(scope="module")
def processor(tiny_tokenizer) -> LlavaKitProcessor:
    config = tiny_llava_config(image_token_id=tiny_tokenizer.convert_tokens_to_ids("<image>"))
    return LlavaKitProcessor.from_model_config(tiny_tokenizer, config, "vicuna_v1")


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    """`datasets` keeps its arrow cache under the test's folder, not the user's."""
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")


def png(seed: int, size=(20, 14)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def chat(question: str, answer: str) -> list[dict[str, str]]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


# Two single-image samples, one two-image sample, one text-only sample, one whose image is missing.
RECORDS = [
    {"id": "a", "image": "a.png", "conversations": chat("<image>\nWhat is it?", "Noise.")},
    {"id": "b", "image": ["b0.png", "b1.png"], "conversations": chat("<image> and <image>: same?", "No.")},
    {"id": "c", "conversations": chat("Say hi.", "Hi.")},
    {"id": "d", "image": "d.png", "conversations": chat("<image>\nColours?", "Many.")},
    {"id": "gone", "image": "gone.png", "conversations": chat("<image>\nAnd this?", "Unknown.")},
]
IMAGES = {"a.png": png(1), "b0.png": png(2), "b1.png": png(3, (16, 30)), "d.png": png(4)}


def names(record) -> list[str]:
    value = record.get("image")
    return [value] if isinstance(value, str) else value or []


def write_llava(folder):
    folder.mkdir()
    for name, data in IMAGES.items():
        (folder / name).write_bytes(data)
    (folder / "data.json").write_text(json.dumps(RECORDS))
    return folder / "data.json"


def write_parquet(folder):
    """An HF-style table: `messages` turns, `images` a list of `{bytes, path}` (HF Image values), two files."""
    folder.mkdir()
    rows = [
        {
            "sample_id": record["id"],
            "messages": record["conversations"],
            "images": [{"bytes": IMAGES.get(name), "path": name} for name in names(record)],
        }
        for record in RECORDS
    ]
    pq.write_table(pa.Table.from_pylist(rows[:2]), folder / "train-00000.parquet")
    pq.write_table(pa.Table.from_pylist(rows[2:]), folder / "train-00001.parquet")
    return folder


def add(tar, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shards(folder):
    """Webdataset layout: `key.json` + `key.png`, or `key.0.png`, `key.1.png`; three samples, then two."""
    folder.mkdir()
    for shard, records in enumerate((RECORDS[:3], RECORDS[3:])):
        with tarfile.open(folder / f"shard-{shard:03d}.tar", "w") as tar:
            for record in records:
                add(tar, f"{record['id']}.json", json.dumps(record).encode())
                several = len(names(record)) > 1
                for position, name in enumerate(names(record)):
                    if name in IMAGES:
                        add(tar, f"{record['id']}.{position}.png" if several else f"{record['id']}.png", IMAGES[name])
    return folder


@pytest.fixture
def three_sources(tmp_path):
    json_file = write_llava(tmp_path / "llava")
    parquet = write_parquet(tmp_path / "parquet")
    shards = write_shards(tmp_path / "shards")
    return [
        DatasetSpec(json_file),
        DatasetSpec(parquet, columns={"id": "sample_id", "conversations": "messages", "image": "images"}),
        DatasetSpec(shards),
    ]


def test_sources_are_told_by_path(three_sources, tmp_path):
    assert [source_of(spec) for spec in three_sources] == ["llava", "hf", "shards"]
    assert source_of(DatasetSpec(tmp_path / "shards" / "shard-000.tar")) == "shards"
    with pytest.raises(ConfigError, match="source must be one of"):
        DatasetSpec(tmp_path, source="webdataset")


def test_the_same_samples_give_the_same_tensors_from_every_source(three_sources, processor):
    datasets = [LlavaDataset([spec], processor, max_length=200) for spec in three_sources]
    reference = datasets[0]
    assert all(len(dataset) == len(RECORDS) for dataset in datasets)
    for index, record in enumerate(RECORDS):
        expected = reference[index]
        assert expected["sample_id"] == record["id"]
        for dataset in datasets[1:]:
            item = dataset[index]
            assert item.keys() == expected.keys()
            for key, value in expected.items():
                if isinstance(value, torch.Tensor):
                    assert torch.equal(item[key], value), (record["id"], key)
                elif key == "skipped":  # the reason names each source's own path
                    assert item[key].split(":")[0] == value.split(":")[0]
                else:
                    assert item[key] == value, (record["id"], key)
    assert reference[4]["skipped"].startswith("missing image")
    assert reference[1]["pixel_values"].shape[0] == 2
    # The length estimates that group batches agree too (one image token count per image).
    assert datasets[1].modality_lengths == reference.modality_lengths == datasets[2].modality_lengths


def test_bad_samples_are_reported_alike_whatever_the_source(three_sources, processor):
    reports = [check_data([spec], processor, max_length=200) for spec in three_sources]
    for report in reports:
        assert report.num_samples == 5 and report.num_good == 4 and report.num_images == 4
        assert [sample_id for sample_id, _ in report.bad_samples] == ["gone"]
        assert report.bad_samples[0][1].startswith("missing image")
    assert len({report.num_tokens for report in reports}) == 1


def test_a_weighted_mixture_draws_from_every_source(three_sources, processor):
    specs = [DatasetSpec(**{**vars(spec), "weight": weight}) for spec, weight in zip(three_sources, (1, 2, 1))]
    dataset = LlavaDataset(specs, processor, max_length=200, mixture_size=20)
    assert dataset.mixture.draw_counts(3) == [5, 10, 5]


def test_broken_shard_members_are_counted_bad_samples(tmp_path, processor):
    folder = tmp_path / "broken"
    folder.mkdir()
    with tarfile.open(folder / "shard.tar", "w") as tar:
        add(tar, "ok.json", json.dumps(RECORDS[0]).encode())
        add(tar, "ok.png", IMAGES["a.png"])
        add(tar, "nojson.png", IMAGES["d.png"])
        add(tar, "badjson.json", b"{not json")
        add(tar, "corrupt.json", json.dumps(RECORDS[3]).encode())
        add(tar, "corrupt.png", b"not a png")
    report = check_data([DatasetSpec(folder)], processor, max_length=200)
    reasons = dict(report.bad_samples)
    assert report.num_good == 1
    assert reasons["nojson"].startswith("malformed record") and "shard.tar" in reasons["nojson"]
    assert reasons["badjson"].startswith("malformed JSON")
    assert reasons["d"].startswith("corrupt image")


def test_an_unknown_column_and_an_empty_folder_name_the_dataset(tmp_path):
    parquet = write_parquet(tmp_path / "parquet")
    with pytest.raises(DataError, match="columns \\['talk'\\] not in the dataset"):
        check_data([DatasetSpec(parquet, columns={"conversations": "talk"})], None, None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        check_data([DatasetSpec(tmp_path / "empty", source="shards")], None, None)


def test_the_compact_index_reads_back_what_load_records_reads(tmp_path):
    from llavakit.data.index import CompactRecords
    from llavakit.data.records import load_records
    from llavakit.data.sources import load_source_records

    records = [*RECORDS, {"id": "odd", "conversations": chat("\ud800 é ✓", "1e400"), "n": [1.5, None, True]}, 7]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    compact = load_source_records(DatasetSpec(path))
    assert isinstance(compact, CompactRecords)
    assert list(compact) == load_records(DatasetSpec(path))  # markers and lone surrogates included
    assert compact[-1]["_load_error"].startswith("malformed record: item 6")
    assert compact.nbytes < 2 * path.stat().st_size
    lines = tmp_path / "data.jsonl"
    lines.write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n{broken\n", encoding="utf-8")
    assert list(load_source_records(DatasetSpec(lines))) == load_records(DatasetSpec(lines))


def test_a_save_to_disk_folder_with_hf_image_features(tmp_path, processor, three_sources):
    """A dataset made with `datasets` itself (its `Image` feature), saved with `save_to_disk`."""
    import datasets

    present = RECORDS[:4]  # `datasets` itself reads a path without bytes when saving
    rows = {
        "id": [r["id"] for r in present],
        "conversations": [r["conversations"] for r in present],
        "images": [[{"bytes": IMAGES.get(n), "path": n} for n in names(r)] for r in present],
    }
    table = datasets.Dataset.from_dict(rows).cast_column("images", datasets.Sequence(datasets.Image()))
    table.save_to_disk(str(tmp_path / "saved"))
    saved = LlavaDataset([DatasetSpec(tmp_path / "saved")], processor, max_length=200)
    reference = LlavaDataset([three_sources[0]], processor, max_length=200)
    for index in range(4):
        mine, theirs = saved[index], reference[index]
        assert mine.keys() == theirs.keys() and torch.equal(mine["input_ids"], theirs["input_ids"])
        assert (mine["pixel_values"] is None) == (theirs["pixel_values"] is None)
        assert mine["pixel_values"] is None or torch.equal(mine["pixel_values"], theirs["pixel_values"])


def test_data_check_maps_columns_from_the_command_line(tmp_path, capsys):
    from llavakit.cli import main

    parquet = write_parquet(tmp_path / "parquet")
    columns = ["--column", "id=sample_id", "--column", "conversations=messages", "--column", "image=images"]
    assert main(["data", "check", str(parquet), *columns]) == 1  # the one missing image
    out = capsys.readouterr().out
    assert "gone" in out and "missing image" in out and "1 bad sample" in out
    assert main(["data", "check", str(parquet), "--column", "conversations"]) != 0
    assert "FIELD=COLUMN" in capsys.readouterr().err


# ---- streaming ----------------------------------------------------------------------------------

SHARDS, PER_SHARD, BATCH = 8, 5, 2


@pytest.fixture(scope="module")
def stream_shards(tmp_path_factory):
    """8 shards of 5 text samples; sample s3-2 has no gpt answer (a bad sample)."""
    folder = tmp_path_factory.mktemp("shards")
    for shard in range(SHARDS):
        with tarfile.open(folder / f"shard-{shard:03d}.tar", "w") as tar:
            for n in range(PER_SHARD):
                turns = [{"from": "human", "value": f"Question {shard} {n}?"}]
                if (shard, n) != (3, 2):
                    turns.append({"from": "gpt", "value": f"Answer {shard * n}."})
                add(tar, f"s{shard}-{n}.json", json.dumps({"id": f"s{shard}-{n}", "conversations": turns}).encode())
    return folder


def batch_ids(batch):
    return [item["sample_id"] for item in batch]


def run_stream(dataset, workers=2):
    loader = DataLoader(dataset, batch_size=BATCH, num_workers=workers, collate_fn=batch_ids)
    return list(loader)


def stream(stream_shards, processor, rank, epoch=0):
    streaming = StreamingShardDataset(
        [DatasetSpec(stream_shards)], processor, 512, seed=5, rank=rank, world_size=2, shuffle_buffer=4
    )
    streaming.set_epoch(epoch)
    return streaming


def test_two_ranks_by_two_workers_see_every_sample_once(stream_shards, processor):
    seen = [
        sample for rank in (0, 1) for batch in run_stream(stream(stream_shards, processor, rank)) for sample in batch
    ]
    assert sorted(seen) == sorted(f"s{s}-{n}" for s in range(SHARDS) for n in range(PER_SHARD))
    assert len(seen) == len(set(seen))
    # Seeded: the same epoch streams the same batches; another epoch another order.
    assert run_stream(stream(stream_shards, processor, 0)) == run_stream(stream(stream_shards, processor, 0))
    assert run_stream(stream(stream_shards, processor, 0, epoch=1)) != run_stream(stream(stream_shards, processor, 0))


def test_a_resumed_run_sees_exactly_the_remaining_batches(stream_shards, processor):
    full = run_stream(stream(stream_shards, processor, 1))
    for seen in (1, 3, 4):
        resumed = stream(stream_shards, processor, 1)
        resumed.resume(batches_seen=seen, batch_size=BATCH)
        assert run_stream(resumed) == full[seen:]


def test_bad_samples_in_a_stream_are_counted_not_lost(stream_shards, processor):
    items = [item for rank in (0, 1) for item in stream(stream_shards, processor, rank)]
    skipped = [item for item in items if "skipped" in item]
    assert [(item["sample_id"], item["skipped"].split(":")[0]) for item in skipped] == [("s3-2", "malformed turns")]
    assert len(items) == SHARDS * PER_SHARD


def test_uneven_files_stream_the_same_count_on_every_consumer(stream_shards, tmp_path, processor, caplog):
    """Files of 11, 11, 11 and 7 samples, 2 ranks x 1 worker: 22 and 18 held, 18 streamed each, 4 left out, said."""
    from llavakit.cli import main

    folder = tmp_path / "uneven"
    assert main(["data", "convert", str(stream_shards), str(folder), "--format", "shards", "--per-file", "11"]) == 0
    assert len(list(folder.glob("*.tar"))) == 4  # 11, 11, 11, 7
    streams = [StreamingShardDataset([DatasetSpec(folder)], processor, 512, rank=rank, world_size=2) for rank in (0, 1)]
    assert streams[0].consumer_loads(1) == [22, 18]  # largest files first, to the lighter consumer
    with caplog.at_level("WARNING", logger="llavakit.data.streaming"):
        batches = [each.configure(num_workers=1, batch_size=BATCH) for each in streams]
    assert batches == [9, 9] and [len(each) for each in streams] == [18, 18]
    assert "4 sample(s) beyond the smallest count are left out" in caplog.text
    seen = [sample for each in streams for batch in run_stream(each, workers=1) for sample in batch]
    assert len(seen) == len(set(seen)) == 36
    with pytest.raises(ConfigError, match="some consumer gets no sample"):
        streams[0].configure(num_workers=3, batch_size=BATCH)


def test_streaming_needs_shards(tmp_path, processor):
    (tmp_path / "data.json").write_text("[]")
    with pytest.raises(ConfigError, match="--format shards"):
        StreamingShardDataset([DatasetSpec(tmp_path / "data.json")], processor, 64)


def test_parquet_files_stream_like_shards(stream_shards, tmp_path, processor):
    """The same samples as parquet (written by `llavakit data convert`, 5 rows a file) stream alike."""
    from llavakit.cli import main

    assert (
        main(
            ["data", "convert", str(stream_shards), str(tmp_path / "parquet"), "--format", "parquet", "--per-file", "5"]
        )
        == 0
    )
    assert len(list((tmp_path / "parquet").glob("*.parquet"))) == SHARDS
    streams = [
        StreamingShardDataset([DatasetSpec(tmp_path / "parquet")], processor, 512, seed=5, rank=rank, world_size=2)
        for rank in (0, 1)
    ]
    seen = [sample for each in streams for batch in run_stream(each) for sample in batch]
    assert sorted(seen) == sorted(f"s{s}-{n}" for s in range(SHARDS) for n in range(PER_SHARD))
