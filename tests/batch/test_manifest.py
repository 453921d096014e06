"""Manifests: JSON lines and YAML, sweeps, every problem named by line and field, stable job ids."""

from __future__ import annotations

import hashlib
import json
import re

import pytest

import fake_jobs  # noqa: F401 - registers the "solid" job type
from attncraft.batch.manifest import ManifestError, canonical_json, load_manifest, parse_manifest
from batch_helpers import write_jsonl
from cli_runner import run_cli


def problems_of(text: str, kind: str = "jsonl") -> list[str]:
    with pytest.raises(ManifestError) as info:
        parse_manifest(text, kind, source="m")
    return [str(p) for p in info.value.problems]


def test_jsonl_and_yaml_describe_the_same_jobs(tmp_path):
    jsonl = write_jsonl(tmp_path / "jobs.jsonl", [
        {"command": "image", "prompt": "a red circle", "steps": 4, "sweep": {"seed": {"start": 0, "stop": 3}, "guidance": [3, 5.5]}},
        {"command": "image", "prompt": "a blue star", "steps": 4, "attention_backend": "sdpa"},
    ])
    (tmp_path / "jobs.yaml").write_text(
        "defaults:\n  image: {steps: 4}\n"
        "jobs:\n"
        "  - command: image\n    prompt: a red circle\n    sweep:\n      seed: [0, 1, 2]\n      guidance: [3.0, 5.5]\n"
        "  - {command: image, prompt: a blue star, attention-backend: sdpa}\n")
    a, b = load_manifest(jsonl), load_manifest(tmp_path / "jobs.yaml")
    assert [j.id for j in a] == [j.id for j in b]
    assert len(a) == 7
    # the last sweep key varies fastest; a default value is not part of the job
    assert [(j.options["seed"], j.options["guidance"]) for j in a[:6]] == [
        (0, 3.0), (0, 5.5), (1, 3.0), (1, 5.5), (2, 3.0), (2, 5.5)]
    assert a[0].spec == {"prompt": "a red circle", "steps": 4, "guidance": 3.0}
    assert a[6].spec == {"prompt": "a blue star", "steps": 4}
    assert a[1].source == "jobs.jsonl:1 (sweep seed=0, guidance=5.5)"
    assert b[6].line == 9 and a[6].line == 2
    assert a[0].options["negative"] is None and a[0].options["model"] == "shapes"  # defaults filled in


def test_job_ids_are_the_documented_hash():
    (job,) = parse_manifest('{"command": "image", "prompt": "a red circle", "seed": 1, "steps": 4}', "jsonl")
    text = '{"command":"image","options":{"prompt":"a red circle","seed":1,"steps":4}}'
    assert canonical_json("image", job.spec) == text
    assert job.id == hashlib.sha256(text.encode()).hexdigest()
    # the literal value (from sha256sum of that text): the same on every machine and in every run
    assert job.id == "72c27d5a78dc1c8aa0837f2e64cd56cfa2d4adc2fa0876d86c5332ebf348f678"
    assert job.stem == f"image-a-red-circle-{job.id[:12]}"
    same = ['{"seed": 1.0, "steps": 4, "command": "image", "prompt": "a red circle", "model": "shapes"}',
            '{"command": "image", "prompt": "a red circle", "seed": 1, "steps": 4, "negative": null, "count": 1}']
    for line in same:
        assert parse_manifest(line, "jsonl")[0].id == job.id, line
    assert parse_manifest('{"command": "image", "prompt": "a red circle", "seed": 2, "steps": 4}', "jsonl")[0].id != job.id


@pytest.mark.parametrize(("line", "expected"), [
    ('{"command": "image", "prompt": "x", "steps": 0}', "m:1: steps: --steps must be between 1 and 1000, got 0; pass e.g. --steps 25"),
    ('{"command": "imag", "prompt": "x"}', "m:1: command: unknown command 'imag'; did you mean 'image'?"),
    ('{"prompt": "x"}', "m:1: command: missing"),
    ('{"command": "image", "promt": "x"}', "m:1: promt: unknown key for command image; did you mean 'prompt'?"),
    ('{"command": "image"}', "m:1: prompt: is required (PROMPT of attncraft image)"),
    ('{"command": "image", "prompt": "x", "seed": "one"}', "m:1: seed: --seed must be a whole number, got 'one'"),
    ('{"command": "image", "prompt": "x", "steps": 2.5}', "m:1: steps: --steps must be a whole number, got 2.5"),
    ('{"command": "image", "prompt": 7}', "m:1: prompt: prompt must be text, got int 7"),
    ('{"command": "image", "prompt": "x", "trust-pickle": "yes"}', "m:1: trust-pickle: trust-pickle must be true or false"),
    ('{"command": "image", "prompt": "x", "guidance": NaN}', "m:1: guidance: --guidance must be a finite number, got nan"),
    ('{"command": "image", "prompt": "x", "device": "cuda"}', "m:1: device: is set for the whole batch, not per job; pass --device or --gpus"),
    ('{"command": "image", "prompt": "x", "out": "y"}', "m:1: out: is set for the whole batch"),
    ('{"command": "image", "prompt": "x", "width": 30}', "m:1: width: --width 30 is not usable by this model"),
    ('{"command": "image", "prompt": "x", "attention-backend": "flash"}', "m:1: attention-backend: unknown attention backend 'flash'"),
    ('{"command": "image", "prompt": "x", "negative": "a\\u0007b"}', "m:1: negative: the negative prompt contains a control character"),
    ('{"command": "image", "prompt": "x", "sweep": {"seed": []}}', "m:1: sweep.seed: the list of values is empty"),
    ('{"command": "image", "prompt": "x", "sweep": {"seed": {"start": 3, "stop": 1}}}', "m:1: sweep.seed: the range from 3 to 1 (step 1) is empty"),
    ('{"command": "image", "prompt": "x", "sweep": {"steps": [2, 0]}}', "m:1: sweep.steps: --steps must be between 1 and 1000, got 0; pass e.g. --steps 25 (sweep steps=0)"),
    ('{"command": "image", "prompt": "x", "sweep": [1]}', "m:1: sweep: must map option names to lists of values"),
    ('{"command": "image", "prompt": "x", "sweep": {"seed": {"start": 0, "stop": 1000000}, "steps": {"start": 1, "stop": 3}}}', "m:1: sweep: expands to 2,000,000 jobs"),
    ('{"command": "image", "prompt": "x", "seed": 1, "seed": 2}', "m:1: not valid JSON: the key 'seed' appears twice"),
    ('{"command": "image", "prompt": "x",', "m:1: not valid JSON: Expecting property name enclosed in double quotes (column 36)"),
    ('["image", "x"]', "m:1: a job must be an object with a 'command' key, got list"),
    ('{"command": "mesh", "prompt": "a vase", "turntable": "avi"}', "m:1: turntable: unknown turntable format 'avi'"),
    ('{"command": "solid", "label": "x", "size": 4}', "m:1: size: --size must be between 8 and 512, got 4"),
    ('{"command": "edit", "mode": "swap"}', "m:1: mode: unknown --mode 'swap'; pass one of replace, refine, reweight"),
    ('{"command": "edit", "reweight": ["circle"]}', "m:1: reweight: --reweight 'circle' is not WORD=SCALE"),
    ('{"command": "edit", "image": "nope.png"}', "m:1: image: the image 'nope.png' does not exist"),
    ('{"command": "customize", "prompt": "a red circle", "subject": "s.png", "word": "star"}',
     "m:1: word: the word 'star' is not in the prompt 'a red circle'"),
    ('{"command": "customize", "prompt": "a red star", "subject": "nope.png", "word": "star"}',
     "m:1: subject: the subject image 'nope.png' does not exist"),
    ('{"command": "customize", "prompt": "a red star", "word": "star"}', "m:1: subject: is required (--subject of attncraft customize)"),
    ('{"command": "video", "prompt": "a red circle", "method": "fancyvideo"}', "m:1: method: unknown key for command video"),
])
def test_every_problem_names_its_line_and_field(line, expected):
    found = problems_of("# a comment\n\n" + line)
    assert len(found) == 1
    assert found[0].replace("m:3:", "m:1:").startswith(expected), found[0]


def test_all_problems_are_listed_and_duplicates_refused():
    text = "\n".join([
        '{"command": "image", "prompt": "a", "steps": 0}',
        '{"command": "image", "prompt": "a red circle", "seed": 1}',
        '{"command": "image", "prompt": "a red circle", "seed": 1.0, "count": 1}',
        '{"command": "image", "prompt": "b", "sweep": {"seed": [4, 4]}}',
    ])
    found = problems_of(text)
    assert found[0].startswith("m:1: steps: --steps must be between 1 and 1000")
    assert found[1].startswith("m:3: the job repeats the job of m:2: the same settings would write the same output image-a-red-circle-")
    assert found[2].startswith("m:4: the job (sweep seed=4) repeats the job of m:4 (sweep seed=4)")
    assert len(found) == 3
    with pytest.raises(ManifestError, match="has no jobs|holds no jobs"):
        parse_manifest("# nothing here\n\n", "jsonl", source="m")


def test_yaml_problems_point_at_the_key_line():
    text = ("defaults:\n  image:\n    steps: 0\n"
            "jobs:\n"
            "  - command: image\n    prompt: a\n"          # lines 5-6: inherits steps 0 from line 3
            "  - command: image\n    prompt: b\n    steps: 2\n    guidance: -1\n"  # line 10
            "  - command: image\n    prompt: c\n    sweep:\n      seed: oops\n")  # line 13
    found = problems_of(text, "yaml")
    assert found == [
        "m:3: defaults.image.steps: --steps must be between 1 and 1000, got 0; pass e.g. --steps 25",
        "m:10: guidance: --guidance must be >= 0, got -1; pass e.g. --guidance 7.5",
        "m:13: sweep.seed: sweep values must be a list or a range, got 'oops'; write e.g. [0, 1, 2] or {start: 0, stop: 8}",
    ]
    assert problems_of("jobs:\n  - command: image\n    prompt: [unclosed\n", "yaml")[0].startswith("m:4: not valid YAML")
    assert problems_of("jobs:\n  - {command: image, prompt: a, prompt: b}\n", "yaml")[0] == "m:2: prompt: the key 'prompt' appears twice"
    assert problems_of("defaults:\n  imgae: {steps: 2}\njobs:\n  - {command: image, prompt: a}\n", "yaml") == [
        "m:2: defaults.imgae: unknown command 'imgae'; did you mean 'image'?; pass one of customize, edit, image, mesh, solid, video"]


def test_job_errors_are_the_command_line_errors(tmp_path, capsys):
    """A job is refused with the very message the command gives for the same option."""
    cases = [["--steps", "0"], ["--guidance", "nan"], ["--seed", "-1"], ["--width", "30"], ["--count", "65"],
             ["--attention-backend", "flash"]]
    for args in cases:
        code, _out, err = run_cli(["image", "a red circle", *args, "--out", tmp_path / "cli"], capsys)
        assert code == 2
        cli_message = err.strip().removeprefix("error: ")
        key, value = args[0][2:], args[1]
        value = float(value) if key == "guidance" else (value if key == "attention-backend" else int(value))
        job = json.dumps({"command": "image", "prompt": "a red circle", key: value})
        (problem,) = problems_of(job)
        assert problem == f"m:1: {key}: {cli_message}"


def test_files_that_are_not_manifests(tmp_path):
    from attncraft.errors import InputError

    (tmp_path / "a.txt").write_text("{}")
    (tmp_path / "b.jsonl").write_bytes(b'{"command": "image", "prompt": "\xff"}\n')
    (tmp_path / "c.yaml").write_bytes(b"\x00\x01")
    for name, needle in (("a.txt", "has the extension '.txt'"), ("b.jsonl", "is not valid UTF-8 (line 1)"),
                         ("c.yaml", "is a binary file"), ("missing.jsonl", "does not exist")):
        with pytest.raises(InputError, match=re.escape(needle)):
            load_manifest(tmp_path / name)


def test_schema_lists_every_option_of_the_command(capsys):
    code, out, _ = run_cli(["image", "--help"], capsys)
    flags = {word.strip(",") for word in out.split() if word.startswith("--")} - {"--help", "--out", "--device", "--overwrite"}
    code, schema, _ = run_cli(["batch", "schema", "image"], capsys)
    assert code == 0
    keys = {line.split()[0] for line in schema.splitlines()[2:] if line.startswith("  ")}
    assert {f"--{k}" for k in keys if k not in ("prompt", "command", "sweep")} == flags
    code, schema, _ = run_cli(["batch", "schema", "--job-module", "fake_jobs"], capsys)
    assert "solid: Draw a solid colour square" in schema and "mesh: Stylise a mesh" in schema
