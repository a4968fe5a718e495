"""Benchmark DICOM ingest: directory indexing vs bare header reads, and C-STORE throughput into the SCP.

1. Indexing: ``--files`` CT instances (pydicom's CT_small.dcm re-identified into ``--series`` series
   of 4 patients) on disk; the same files are read with bare ``dcmread(stop_before_pixels=True)``,
   then indexed by ``node.dicom.index.index_paths`` into a fresh SQLite CDM, in the same run (page
   cache warm for both: the first pass is a discarded warm-up).  Target: indexing >= 50% of bare reads.
   Indexing reads each file whole (content digest, truncation check) but parses only the header.
2. C-STORE: the in-process Storage SCP receives ``--store`` instances over one association from a
   pynetdicom SCU and from dcmtk ``storescu``; instances/s include writing the file and indexing.
   The same instances JPEG 2000 (lossless) and RLE compressed go through ``storescu`` with
   TCP_NODELAY in the same run: the SCP stores them as received, without decoding.

    .venv/bin/python benchmarks/bench_dicom.py [--files 2000] [--series 20] [--store 500]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cdm.db import create_cdm, open_engine  # noqa: E402
from cdm.ids import stable_id  # noqa: E402
from cdm.schema import tables  # noqa: E402
from sqlalchemy import insert  # noqa: E402

PATIENTS = ("P1", "P2", "P3", "P4")


def make_files(folder: Path, count: int, series: int, syntax: str | None = None) -> list[Path]:
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    if syntax:
        template.compress(syntax, generate_instance_uid=False)
    uids = [(PATIENTS[i % len(PATIENTS)], generate_uid(), generate_uid()) for i in range(series)]
    paths = []
    for n in range(count):
        patient, study, series_uid = uids[n % series]
        template.PatientID, template.StudyInstanceUID, template.SeriesInstanceUID = patient, study, series_uid
        template.SOPInstanceUID = template.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        template.InstanceNumber = n
        path = folder / series_uid / f"{n:06d}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        template.save_as(path)
        paths.append(path)
    return paths


def fresh_cdm(path: Path):
    engine = open_engine(path)
    create_cdm(engine)
    with engine.begin() as conn:
        for pid in PATIENTS:
            conn.execute(insert(tables["person"]).values(
                person_id=stable_id("bench", pid), gender_concept_id=0, year_of_birth=1970, race_concept_id=0,
                ethnicity_concept_id=0, person_source_value=pid))
    return engine


def bench_index(work: Path, files: int, series: int) -> dict:
    from node.dicom.index import index_paths

    paths = make_files(work / "files", files, series)
    for p in paths:  # warm the page cache for both contenders
        p.read_bytes()
    started = time.perf_counter()
    for p in paths:
        pydicom.dcmread(p, stop_before_pixels=True)
    bare = time.perf_counter() - started
    engine = fresh_cdm(work / "index.sqlite")
    started = time.perf_counter()
    report = index_paths(engine, [work / "files"])
    indexed = time.perf_counter() - started
    assert report.indexed == files, report.summary()
    return {"files": files, "series": series, "bare_files_per_s": round(files / bare),
            "index_files_per_s": round(files / indexed), "ratio": round(bare / indexed, 2)}


_SCU = """
import sys, time, pydicom
from pathlib import Path
from pynetdicom import AE
from node.dicom.network import NODELAY_HANDLERS
datasets = [pydicom.dcmread(p) for p in sorted(Path(sys.argv[2]).rglob("*.dcm"))]
ae = AE(ae_title="BENCHSCU")
ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2")
assoc = ae.associate("127.0.0.1", int(sys.argv[1]), ae_title="BENCH", evt_handlers=NODELAY_HANDLERS)
started = time.perf_counter()
for ds in datasets:
    assert assoc.send_c_store(ds).Status == 0
assoc.release()
print(len(datasets) / (time.perf_counter() - started))
"""


def bench_store(work: Path, count: int) -> dict:
    """Instances/s into the in-process SCP (store + index) from three senders, each in its own process."""
    import os

    from node.dicom.scp import StorageSCP

    results = {"instances": count}
    engine = fresh_cdm(work / "scp.sqlite")
    scp = StorageSCP(engine, work / "scp-data", "BENCH", port=0)
    port = scp.start()
    repo = str(Path(__file__).resolve().parent.parent)
    try:
        folder = work / "scu-src"
        make_files(folder, count, 4)
        out = subprocess.run([sys.executable, "-c", _SCU, str(port), str(folder)], check=True,
                             capture_output=True, text=True, env={**os.environ, "PYTHONPATH": repo})
        results["pynetdicom_scu_nodelay_per_s"] = round(float(out.stdout.strip()))
        # dcmtk disables Nagle only when TCP_NODELAY is set in its environment (dcmnet/libsrc/dulfsm.cc).
        # -x?: propose the files' own encoding (uncompressed, JPEG 2000 lossless, RLE), as an archive does.
        runs = (("storescu_nodelay_per_s", {"TCP_NODELAY": "1"}, None, "-xe"),
                ("storescu_nagle_per_s", {}, None, "-xe"),
                ("storescu_nodelay_j2k_per_s", {"TCP_NODELAY": "1"}, "1.2.840.10008.1.2.4.90", "-xv"),
                ("storescu_nodelay_rle_per_s", {"TCP_NODELAY": "1"}, "1.2.840.10008.1.2.5", "-xr"))
        for label, env, syntax, propose in runs:
            folder = work / label
            paths = make_files(folder, count, 4, syntax)
            results[label.replace("_per_s", "_kb_per_instance")] = round(sum(p.stat().st_size for p in paths) / count / 1024, 1)
            started = time.perf_counter()
            subprocess.run(["storescu", "+sd", "+r", propose, "-aec", "BENCH", "127.0.0.1", str(port), str(folder)],
                           check=True, capture_output=True, env={**os.environ, **env})
            results[label] = round(count / (time.perf_counter() - started))
    finally:
        scp.stop()
    assert scp.store.stored == 5 * count, scp.store.stored
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--series", type=int, default=20)
    parser.add_argument("--store", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        out = {"index": bench_index(work, args.files, args.series), "c_store": bench_store(work, args.store)}
    print(json.dumps(out, indent=2))
    results = Path(__file__).resolve().parent / "results"
    results.mkdir(exist_ok=True)
    (results / "dicom.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
