"""The configuration reference stays in step with the configs: every key described, no stale
description, and docs/configs.md equal to what `python -m configs.reference` writes.

Configs are only built (ConfigDicts), never run: no compilation, a few seconds in all.
"""
import pytest

from configs import reference

VARIANTS = (None, "tiny")


@pytest.fixture(scope="module")
def keys_by_stage():
    """{stage: {config file: set of dotted keys}}, over both variants of every config."""
    out = {}
    for stage, _, suffix in reference.STAGES:
        for dataset in reference.DATASETS:
            for variant in VARIANTS:
                config = reference.load(dataset, stage, variant)
                assert config.model == stage, f"configs/{dataset}{suffix}.py: model={config.model!r}"
                name = f"configs/{dataset}{suffix}.py" + (f":{variant}" if variant else "")
                out.setdefault(stage, {})[name] = set(reference.flatten(config))
    return out


def test_the_documented_configs_are_all_the_configs():
    expected = sorted(f"{d}{suffix}" for d in reference.DATASETS for _, _, suffix in reference.STAGES)
    assert reference.config_files() == expected, (
        "configs/ has configs the reference does not list (or lists missing ones): "
        "update DATASETS in configs/reference.py")


def test_every_config_key_has_a_description(keys_by_stage):
    missing = {f"{name}: {key}" for files in keys_by_stage.values()
               for name, keys in files.items() for key in keys if key not in reference.KEY_DOCS}
    assert not missing, f"add these keys to KEY_DOCS in configs/reference.py: {sorted(missing)}"


def test_no_description_of_a_key_that_no_config_has(keys_by_stage):
    every_key = set().union(*(k for files in keys_by_stage.values() for k in files.values()))
    stale = sorted(set(reference.KEY_DOCS) - every_key)
    assert not stale, f"KEY_DOCS describes keys no config has (remove them): {stale}"


def test_tiny_variants_have_the_keys_of_their_config(keys_by_stage):
    # docs/configs.md lists the full configs only, which is right only if the keys agree.
    for files in keys_by_stage.values():
        for name, keys in files.items():
            if name.endswith(":tiny"):
                assert keys == files[name[:-len(":tiny")]], name


def test_descriptions_are_single_lines_split_by_stage_where_needed(keys_by_stage):
    stages_of = {}
    for stage, files in keys_by_stage.items():
        for keys in files.values():
            for key in keys:
                stages_of.setdefault(key, set()).add(stage)
    for key, doc in reference.KEY_DOCS.items():
        texts = doc.values() if isinstance(doc, dict) else [doc]
        if isinstance(doc, dict):
            assert set(doc) == stages_of[key], f"KEY_DOCS[{key!r}] must describe stages {stages_of[key]}"
        for text in texts:
            assert isinstance(text, str) and text.strip(), key
            assert "\n" not in text, f"KEY_DOCS[{key!r}] must be one line (one table cell)"


def test_format_value_is_compact():
    f = reference.format_value
    assert [f(1_000_000), f(300_000), f(5000), f(10**9), f(1e-4), f(3e-4), f(0.95), f(600.0)] == \
        ["1M", "300k", "5000", "1e9", "1e-4", "3e-4", "0.95", "600.0"]
    assert [f((256, 512)), f(True), f("cosine"), f("")] == ["(256, 512)", "True", "`cosine`", "`''`"]


def test_docs_configs_md_is_up_to_date():
    assert reference.DOC_PATH.is_file(), "docs/configs.md is missing: run python -m configs.reference"
    assert reference.DOC_PATH.read_text() == reference.render(), \
        "docs/configs.md is out of date: run python -m configs.reference"
