"""SymbioConfig, its JSON file format and the --symbio preset (PRD §5.2, §7)."""

from __future__ import annotations

import json

import pytest

from symbio.config import SymbioConfig, SymbioConfigError, load_symbio_config
from symbio.preset import SYMBIO_PRESET

PRD_DEFAULTS = {
    "cusumSensitivity": 4.0,
    "cusumBaselineWindow": 10,
    "metricsInterval": 50,
    "trackWeightEntropy": True,
    "trackEffectiveRank": True,
    "trackFreeEnergy": True,
    "trackMIProfiles": False,
    "trackPopulationMetrics": True,
    "freeEnergyBeta": 0.01,
    "miNumBins": 30,
    "adaptiveBatch": True,
    "batchMin": 8,
    "batchMax": 64,
    "batchStep": 4,
    "calmStepsBeforeRestore": 200,
    "fitnessAlpha": 1.0,
    "complexityMode": "entropy",
    "diversityBonus": 0.0,
    "diversityDecay": "none",
    "searchMode": "ffn-activation-search",
    "activationPool": ["gelu", "relu", "silu", "swiglu"],
    "searchStrategy": "evolutionary",
    "populationSize": 6,
    "generations": 4,
    "selectionStrategy": "topk",
    "tournamentK": 3,
    "mutationRate": 0.25,
    "stepsPerCandidate": 1000,
    "rankBy": "valLoss",
    "perfWeight": 0.0,
    "stabilityWeight": 0.0,
    "writeReport": True,
    "writeCandidates": True,
    "writeSummary": True,
}


#: Search keys beyond PRD §7.3 (docs/search.md: halving, lr gene, confirmation).
SEARCH_EXTENSIONS = {
    "halvingEta": 2.0,
    "lrGene": False,
    "lrGeneRange": [1e-4, 3e-3],
    "confirmSeeds": 3,
    "confirmSteps": None,
}


def test_defaults_are_the_prd_defaults() -> None:
    assert SymbioConfig().to_camel_dict() == {**PRD_DEFAULTS, **SEARCH_EXTENSIONS}
    config, overrides = load_symbio_config(None)
    assert config == SymbioConfig() and overrides == {}


def test_camel_and_snake_names_both_work() -> None:
    assert SymbioConfig(cusumSensitivity=2.5).cusum_sensitivity == 2.5
    assert SymbioConfig(cusum_sensitivity=3).cusum_sensitivity == 3.0
    assert SymbioConfig(trackMIProfiles=True).track_mi_profiles is True


def test_prd_file_format_loads(tmp_path) -> None:
    doc = {
        "cusumSensitivity": 4.0,
        "metricsInterval": 50,
        "adaptiveBatch": True,
        "searchMode": "ffn-activation-search",
        "activationPool": ["gelu", "relu", "silu", "swiglu"],
        "searchStrategy": "evolutionary",
        "populationSize": 6,
        "generations": 4,
        "stepsPerCandidate": 1000,
        "rankBy": "valLoss",
    }
    path = tmp_path / "symbio.json"
    path.write_text(json.dumps({**doc, "metricsInterval": 7, "searchMode": "none"}))
    config, overrides = load_symbio_config(path)
    assert config.metrics_interval == 7 and config.search_mode == "none"
    assert config.batch_max == 64  # unspecified -> default
    assert overrides == {}
    assert load_symbio_config(str(path))[0] == config


def test_training_keys_become_train_overrides() -> None:
    config, overrides = load_symbio_config(
        {
            "ffnActivation": "silu",
            "lr": 1e-3,
            "gradClip": 2.0,
            "warmupIters": 5,
            "batch": 4,
            "ffnDim": 96,
            "spikeThreshold": 3.0,
            "metricsInterval": 10,
        }
    )
    assert config.metrics_interval == 10
    assert overrides == {
        "activation": "silu",
        "lr": 1e-3,
        "grad_clip": 2.0,
        "warmup_iters": 5,
        "batch": 4,
        "ffn_dim": 96,
        "spike_threshold": 3.0,
    }


def test_resolved_config_round_trips_through_camel_json() -> None:
    config = SymbioConfig(metrics_interval=5, activation_pool=("silu", "gelu"))
    again, _ = load_symbio_config(json.loads(config.to_camel_json()))
    assert again == config


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({"cusumSensitivity": -1}, "symbio config: cusumSensitivity: must be > 0.0 (got -1)"),
        ({"cusumSensitivity": 0}, "cusumSensitivity: must be > 0"),
        ({"cusumBaselineWindow": 1}, "cusumBaselineWindow: must be >= 2"),
        ({"metricsInterval": "50"}, "metricsInterval: must be a valid integer (got '50')"),
        ({"metricsInterval": 0}, "metricsInterval: must be >= 1"),
        ({"batchMin": 80}, "batchMin: must be <= batchMax (64) (got 80)"),
        ({"mutationRate": 1.5}, "mutationRate: must be <= 1"),
        ({"mutationRate": -0.1}, "mutationRate: must be >= 0"),
        ({"populationSize": 0}, "populationSize: must be >= 1"),
        ({"activationPool": []}, "activationPool: must name at least one activation"),
        ({"activationPool": ["gelu", "tanh"]}, "activationPool[1]: must be 'gelu', 'relu'"),
        ({"activationPool": ["gelu", "gelu"]}, "activationPool: must not repeat"),
        ({"complexityMode": "bits"}, "complexityMode: must be 'params', 'entropy' or 'mdl'"),
        ({"adaptiveBatch": "yes"}, "adaptiveBatch: must be a valid boolean"),
        ({"cusumSensitivty": 4}, "symbio config: cusumSensitivty: unknown key"),
        ({"lr": -1}, "symbio config: lr: must be > 0"),
        ({"ffnActivation": "tanh"}, "ffnActivation: must be 'gelu', 'relu', 'silu' or 'swiglu'"),
        ({"warmupIters": 1.5}, "warmupIters: must be a valid integer"),
        ({"activation": "gelu", "ffnActivation": "silu"}, "ffnActivation: conflicts"),
    ],
)
def test_bad_configs_raise_one_line_naming_the_field(doc: dict, expected: str) -> None:
    with pytest.raises(SymbioConfigError) as info:
        load_symbio_config(doc)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message and message.startswith("symbio config: ")


def test_bad_files_raise_one_line(tmp_path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(SymbioConfigError, match="file not found"):
        load_symbio_config(missing)
    bad = tmp_path / "bad.json"
    bad.write_text('{"metricsInterval": 5,,}')
    with pytest.raises(SymbioConfigError, match=r"invalid JSON at line 1") as info:
        load_symbio_config(bad)
    assert "\n" not in str(info.value)
    array = tmp_path / "array.json"
    array.write_text("[1, 2]")
    with pytest.raises(SymbioConfigError, match="must be a JSON object"):
        load_symbio_config(array)


def test_symbio_config_error_is_a_value_error() -> None:
    assert issubclass(SymbioConfigError, ValueError)


def test_preset_is_prd_section_7() -> None:
    assert SYMBIO_PRESET == {
        "activation": "swiglu",
        "lr": 5e-5,
        "grad_clip": 5.0,
        "warmup_iters": 500,
        "spike_threshold": 10.0,
    }


def test_preset_keys_are_train_config_fields() -> None:
    config = pytest.importorskip("model.config")
    fields = set(config.TrainConfig.model_fields)
    assert set(SYMBIO_PRESET) <= fields
    _, overrides = load_symbio_config(
        {
            "activation": "relu",
            "ffnDim": 64,
            "lr": 1e-3,
            "lrMin": 1e-4,
            "gradClip": 1.0,
            "warmupIters": 1,
            "spikeThreshold": 1.0,
            "batch": 2,
            "weightDecay": 0.0,
        }
    )
    assert set(overrides) <= fields
    config.TrainConfig.model_validate({**SYMBIO_PRESET, **overrides})
