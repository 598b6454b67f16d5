"""Input samples for the AutoTuner: the first N records of each file source, and the full size.

Line formats (CSV, JSONL, text) are copied line by line (a CSV header is kept, one per sample);
Parquet is copied batch by batch. The full input's record count is counted exactly for inputs
up to ``COUNT_LIMIT_BYTES`` (newlines, or Parquet metadata) and estimated from the sample's
bytes per record above that.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from beam_etl.io import _file_common as common

LINE_SOURCES = {"ReadFromCsv": "csv", "ReadFromJsonl": "jsonl", "ReadFromText": "txt"}
PARQUET_SOURCES = {"ReadFromParquet"}
COUNT_LIMIT_BYTES = 4 << 30
_CHUNK = 8 << 20


class SampleError(ValueError):
    """A source that cannot be sampled, or a sample with no records."""


@dataclasses.dataclass
class SourceSample:
    """One file source: its full size and a sample file per requested size."""

    name: str
    type: str
    full_rows: int
    full_bytes: int
    exact: bool
    files: dict[int, str] = dataclasses.field(default_factory=dict)  # requested rows -> sample path
    rows: dict[int, int] = dataclasses.field(default_factory=dict)  # requested rows -> rows taken
    bytes: dict[int, int] = dataclasses.field(default_factory=dict)  # requested rows -> sample bytes

    def overrides(self, requested: int, split_size: int | None) -> list[str]:
        """``--set`` overrides that read this source's sample; ``split_size`` keeps the full input's
        number of parallel work items."""
        out = [f"sources.{self.name}.config.path={self.files[requested]}"]
        if self.type in LINE_SOURCES:
            out.append(f"sources.{self.name}.config.compression=none")
        if split_size and self.full_bytes:
            share = self.bytes[requested] / self.full_bytes
            out.append(f"sources.{self.name}.config.split_size={max(1024, int(split_size * share))}")
        return out


def sampleable(type_name: str) -> bool:
    return type_name in LINE_SOURCES or type_name in PARQUET_SOURCES


def _files(config: Any) -> list[str]:
    try:
        return [m.path for m in common.match_files(common.as_path_list(config.path))]
    except ValueError as err:
        raise SampleError(str(err)) from err


def _sizes(paths: list[str]) -> int:
    from apache_beam.io.filesystems import FileSystems

    return sum(int(m.size_in_bytes or 0) for r in FileSystems.match(paths) for m in r.metadata_list)


def _lines(paths: list[str], compression: str) -> Any:
    """Yields (file index, line bytes) over every file, newline kept."""
    for i, path in enumerate(paths):
        with common.open_read(path, common.resolve_compression(path, compression)) as handle:
            for line in handle:
                yield i, line


def _count_lines(paths: list[str], compression: str, header: bool) -> int:
    total = 0
    for path in paths:
        with common.open_read(path, common.resolve_compression(path, compression)) as handle:
            count, last = 0, b"\n"
            while chunk := handle.read(_CHUNK):
                count += chunk.count(b"\n")
                last = chunk[-1:]
            count += last != b"\n"
            total += max(count - header, 0)
    return total


def _has_header(type_name: str, config: Any) -> bool:
    return type_name == "ReadFromCsv" and bool(getattr(config, "header", False))


def count_records(type_name: str, config: Any) -> tuple[int | None, int]:
    """(records, bytes) of a file source's full input; records is None when too large to count here."""
    paths = _files(config)
    full_bytes = _sizes(paths)
    if type_name in PARQUET_SOURCES:
        import pyarrow.parquet as pq
        from apache_beam.io.filesystems import FileSystems

        rows = 0
        for path in paths:
            with FileSystems.open(path) as handle:
                rows += pq.ParquetFile(handle).metadata.num_rows
        return rows, full_bytes
    if full_bytes > COUNT_LIMIT_BYTES:
        return None, full_bytes
    return _count_lines(paths, getattr(config, "compression", "auto"), _has_header(type_name, config)), full_bytes


def _sample_lines(name: str, type_name: str, config: Any, wanted: int) -> tuple[bytes, list[bytes]]:
    paths = _files(config)
    header = _has_header(type_name, config)
    head, body = b"", []
    for index, line in _lines(paths, getattr(config, "compression", "auto")):
        if header and index == 0 and not head:
            head = line if line.endswith(b"\n") else line + b"\n"
            continue
        if header and index > 0 and line.rstrip(b"\r\n") == head.rstrip(b"\r\n"):
            continue  # the header again, at the top of a later file
        if not line.strip():
            continue
        if len(body) >= wanted:
            break
        body.append(line if line.endswith(b"\n") else line + b"\n")
    return head, body


def _sample_parquet(config: Any, wanted: int) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems

    batches: list[pa.RecordBatch] = []
    taken = 0
    for path in _files(config):
        with FileSystems.open(path) as handle:
            for batch in pq.ParquetFile(handle).iter_batches(batch_size=65_536):
                batches.append(batch.slice(0, wanted - taken))
                taken += batches[-1].num_rows
                if taken >= wanted:
                    return pa.Table.from_batches(batches)
    return pa.Table.from_batches(batches) if batches else None


def sample_source(name: str, type_name: str, config: Any, folder: Path, sizes: list[int],
                  full: tuple[int | None, int]) -> SourceSample:
    """Writes the first ``size`` records of a file source for each size; ``full`` is ``count_records``."""
    if not sampleable(type_name):
        raise SampleError(f"source {name!r}: {type_name} cannot be sampled")
    full_rows, full_bytes = full
    sizes = sorted({max(1, s) for s in sizes})
    folder.mkdir(parents=True, exist_ok=True)
    if type_name in PARQUET_SOURCES:
        import pyarrow.parquet as pq

        table = _sample_parquet(config, sizes[-1])
        if table is None or table.num_rows == 0:
            raise SampleError(f"sample is empty: source {name!r} ({config.path}) has no records")
        sample = SourceSample(name, type_name, int(full_rows or 0), full_bytes, True)
        for size in sizes:
            path = folder / f"{name}_{size}.parquet"
            pq.write_table(table.slice(0, size), path)
            sample.files[size], sample.rows[size] = str(path), min(size, table.num_rows)
            sample.bytes[size] = path.stat().st_size
        return sample
    head, body = _sample_lines(name, type_name, config, sizes[-1])
    if not body:
        raise SampleError(f"sample is empty: source {name!r} ({config.path}) has no records")
    exact = full_rows is not None
    if full_rows is None:  # too large to count: the sample's bytes per record
        full_rows = max(len(body), int(full_bytes * len(body) / sum(map(len, body))))
    sample = SourceSample(name, type_name, full_rows, full_bytes, exact)
    for size in sizes:
        path = folder / f"{name}_{size}.{LINE_SOURCES[type_name]}"
        data = head + b"".join(body[:size])
        path.write_bytes(data)
        sample.files[size], sample.rows[size], sample.bytes[size] = str(path), min(size, len(body)), len(data)
    return sample
