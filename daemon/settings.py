"""Settings: the one place the environment and the TOML file are read.

Read once at start-up by `load_settings()` and passed down frozen. Environment variables use the
`LSTMD_` prefix and `__` for nesting (`LSTMD_MODEL__UNITS=64`); a TOML file named by
`LSTMD_CONFIG` (or `--config`) supplies defaults that the environment overrides.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

CONFIG_ENV_VAR = "LSTMD_CONFIG"
# One train batch must fit in memory with room to spare: inputs, targets and mask, plus what
# backpropagation through time keeps per timestep and layer (four gates, cell, hidden state and
# their gradients: about 8 x units float32 values). 1 GiB is a quarter of a small 4 GiB pod.
MAX_BATCH_BYTES = 1 << 30
_FLOAT32_BYTES = 4


class SettingsError(ValueError):
    """A setting is invalid; the message is one line that names it."""


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Section):
    """Where events come from and where predictions go."""

    bootstrap_servers: str = Field(
        "", description="Comma-separated host:port list; empty starts the embedded broker."
    )
    input_topic: str = Field("lstmd-events", min_length=1)
    predictions_topic: str = Field("lstmd-predictions", min_length=1)
    dead_letter_topic: str = Field("lstmd-dead-letter", min_length=1)
    metrics_topic: str = Field("lstmd-metrics", min_length=1)
    group_id: str = Field("lstmd", min_length=1)
    # Static membership (KIP-345): a member that comes back under the same id within the session
    # timeout keeps its partitions without a rebalance. In k8s, the pod's name.
    group_instance_id: str | None = Field(
        None, min_length=1, max_length=249, description="Static group membership id; unset: off."
    )
    state_topic: str = Field(
        "lstmd-state", min_length=1, description="Compacted topic: per input partition state."
    )
    weights_topic: str = Field(
        "lstmd-weights", min_length=1, description="Compacted topic: each replica's weights."
    )
    # -1 asks the broker for its default.replication.factor (KIP-464, Kafka 2.4+). One replica
    # would make the state topic, which commits wait on, die with one broker.
    replication_factor: int = Field(
        -1,
        ge=-1,
        le=32,
        description="Replication factor of the topics lstmd creates; -1: the broker's default.",
    )
    client_id: str = Field("lstmd", min_length=1)
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    # Tansu and small clusters: a short session makes a group join take seconds, not 20+.
    session_timeout_ms: int = Field(6000, ge=1000)
    heartbeat_interval_ms: int = Field(1000, ge=100)
    max_poll_records: int = Field(2000, ge=1)
    poll_timeout_ms: int = Field(200, ge=0)
    # kafka-python's 500 ms default adds up to half a second to every prediction on a quiet
    # stream (bench/latency.py).
    fetch_max_wait_ms: int = Field(100, ge=0)
    producer_linger_ms: int = Field(5, ge=0)
    producer_batch_bytes: int = Field(262144, ge=1024)
    # The predictions' producer in a child process (daemon/edges/publisher_process.py): the
    # loop thread is GIL-bound, and on a second core kafka-python's per-record send no longer
    # takes its time. Off: one process, for a single core.
    publisher_process: bool = True
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_password: SecretStr | None = None
    embedded_port: int = Field(
        9092, ge=0, le=65535, description="Port of the embedded broker; 0 picks a free one."
    )

    # kafka-python's and Kafka's own default; raise both together (the broker's message.max.bytes).
    max_request_size: int = Field(
        1_048_576, ge=4096, description="Largest record the producer sends, in bytes."
    )
    dead_letter_max_bytes: int = Field(
        1_000_000,
        ge=1024,
        description="Dead-letter payloads are cut to this size (counted); below max_request_size.",
    )

    @field_validator("ssl_cafile", "ssl_certfile", "ssl_keyfile")
    @classmethod
    def _file_exists(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).is_file():
            raise ValueError(f"file not found: {value}")
        return value

    @model_validator(mode="after")
    def _sasl_needs_credentials(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL") and not (
            self.sasl_mechanism and self.sasl_username and self.sasl_password
        ):
            raise ValueError("SASL security needs sasl_mechanism, sasl_username and sasl_password")
        return self

    @model_validator(mode="after")
    def _settings_that_cannot_work(self) -> KafkaSettings:
        outputs = {
            "predictions_topic": self.predictions_topic,
            "dead_letter_topic": self.dead_letter_topic,
            "metrics_topic": self.metrics_topic,
        }
        for name, topic in outputs.items():
            if topic == self.input_topic:
                # The daemon would consume its own output and answer it forever.
                raise ValueError(f"kafka.input_topic: must differ from kafka.{name} ({topic!r})")
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ValueError(
                "kafka.heartbeat_interval_ms: must be below kafka.session_timeout_ms "
                "(a third of it is usual), or the group evicts a healthy member"
            )
        if self.replication_factor == 0:
            raise ValueError(
                "kafka.replication_factor: must be -1 (the broker's default) or at least 1"
            )
        if self.dead_letter_max_bytes >= self.max_request_size:
            raise ValueError(
                "kafka.dead_letter_max_bytes: must be below kafka.max_request_size, "
                "which must also hold the dead letter's headers and key"
            )
        return self


class ModelSettings(_Section):
    """Shape and optimisation of the LSTM."""

    n_features: int = Field(1, ge=1)
    n_targets: int = Field(1, ge=1)
    target_index: tuple[int, ...] = Field(
        (0,), description="Forecast mode: which features are the next event's target."
    )
    # H values per target per forecast. 1000 bounds the prediction message (about 20 B per
    # value: 20 kB per target) and the events a key holds back waiting for their H successors.
    horizon: int = Field(
        1,
        ge=1,
        le=1000,
        description="H: forecast mode forecasts each target's next H values (supervised: 1).",
    )
    # 16, 32 and 64 units scored within 0.1 MAE on Birthdays; 16 is the cheapest (README).
    units: int = Field(16, ge=1)
    layers: int = Field(1, ge=1, le=8)
    batch_size: int = Field(32, ge=1, description="B: keys (rows) per train step.")
    # T=4 (B=32) scored Birthdays 13.40 and elecdemand 0.0591 against 14.52 and 0.0703 at T=16:
    # with keys sharing full batches, a shorter window means 4x more optimizer steps on the
    # same events, which online learning needs more than longer backpropagation (README).
    window: int = Field(4, ge=1, description="T: timesteps per row of a batch.")
    # Forecasts of a poll's keys run through one compiled inference step of this many rows
    # (and `window` timesteps); more rows mean fewer calls per poll with many keys.
    infer_batch_size: int = Field(128, ge=1, description="Rows per forecast inference call.")
    # 0.004 against 0.003 with the seasonal steps (one run each): Birthdays 12.99 / 13.01,
    # us_employment 27.44 / 28.01, elecdemand 0.0295 / 0.0294, nyc_weather 0.975 / 0.975;
    # 0.002 gave 13.06 on Birthdays (README, Forecast quality).
    learning_rate: float = Field(4e-3, gt=0, le=10)
    # Huber scored lower MAE than MSE on every built-in set (Birthdays 13.23 vs 13.28,
    # elecdemand 0.0306 vs 0.0314): rare large steps (holidays, outliers) pull less.
    loss: Literal["huber", "mse", "mae"] = Field(
        "huber", description="Training loss on normalised targets (Huber delta 1)."
    )
    clipnorm: float = Field(1.0, gt=0)
    seed: int = 0
    max_nonfinite_steps: int = Field(
        3, ge=1, description="Consecutive non-finite steps before rolling back to a snapshot."
    )
    deterministic: bool = Field(
        False, description="Deterministic TensorFlow ops: reproducible weights, a little slower."
    )
    sync_every_s: float = Field(
        0.0,
        ge=0,
        description="Publish weights and adopt the replicas' average this often; 0 = never.",
    )

    @field_validator("sync_every_s")
    @classmethod
    def _sync_not_too_often(cls, value: float) -> float:
        # Each sync publishes and reads the weights topic on the loop thread. Measured on Tansu:
        # every 0.2 s starved the loop and stalled a restarted member's group join past 120 s.
        if 0 < value < 1:
            raise ValueError("must be 0 (off) or at least 1 s")
        return value

    def shape(self) -> dict[str, object]:
        """Return the settings a snapshot must have been made with to be loadable."""
        return {
            name: getattr(self, name)
            for name in (
                "n_features",
                "n_targets",
                "target_index",
                "horizon",
                "units",
                "layers",
                "batch_size",
                "window",
            )
        }

    @model_validator(mode="after")
    def _targets_fit_features(self) -> ModelSettings:
        if len(self.target_index) != self.n_targets:
            raise ValueError("target_index must name exactly n_targets features")
        if any(i < 0 or i >= self.n_features for i in self.target_index):
            raise ValueError("target_index entries must lie in [0, n_features)")
        return self

    def batch_bytes(self) -> int:
        """Return an upper estimate of the memory one train batch needs, in bytes."""
        outputs = self.n_targets * self.horizon
        per_timestep = self.n_features + outputs + 1 + 8 * self.units * self.layers
        return self.batch_size * self.window * per_timestep * _FLOAT32_BYTES

    @model_validator(mode="after")
    def _batch_fits_in_memory(self) -> ModelSettings:
        needed = self.batch_bytes()
        if needed > MAX_BATCH_BYTES:
            raise ValueError(
                f"model.batch_size: with model.window too large, one batch needs about "
                f"{needed / 2**30:.1f} GiB, the bound is {MAX_BATCH_BYTES / 2**30:g} GiB "
                "(batch_size x window x (n_features + n_targets x horizon + 1 + 8 x units x layers)"
                " x 4 B)"
            )
        return self


class StreamSettings(_Section):
    """The key-state store, batching and the state reset policy."""

    max_batch_wait_ms: int = Field(
        500, ge=0, description="Close a batch this long after its first event; 0 disables."
    )
    max_keys: int = Field(
        100_000,
        ge=1,
        description="Keys per input partition's store; past it the least "
        "recently active are dropped.",
    )
    reset_after_idle_s: float = Field(0.0, ge=0, description="Event-time gap; 0 disables.")
    reset_every_steps: int = Field(0, ge=0, description="Global reset period; 0 disables.")
    normalise: bool = True
    # "difference" measured better on both evaluation data sets' smooth series and only 1% worse
    # on Birthdays' 100k prefix (README, Forecast quality).
    target_scaling: Literal["level", "difference", "smoothed"] = Field(
        "difference",
        description="Forecast mode: learn the next value (level), its change (difference), or "
        "its difference from the key's best cheap forecast (smoothed; needs derived_smoothing).",
    )
    max_event_bytes: int = Field(1_048_576, ge=64, description="Larger messages: too_large.")
    # Keys are stream names; 256 bytes holds any sensible name, and a key is copied into every
    # prediction and held in memory once per key in the store.
    max_key_bytes: int = Field(256, ge=1, le=65_536, description="Longer keys: key_too_large.")
    max_future_s: float = Field(
        86_400.0, ge=0, description="Events this far past the wall clock: future_ts; 0 disables."
    )
    # Derived features (daemon/core/derived.py): an LSTM with T=16 truncated backpropagation
    # cannot carry a 48- or 336-step season in its state; lags and the calendar hand it over.
    derived_calendar: bool = Field(
        True, description="Append time of day/week/year (sin, cos) of the forecast's target time."
    )
    # See daemon/core/smoothing.py and docs/forecasts.md.
    derived_smoothing: bool = Field(
        True,
        description="Append cheap statistical forecasts (seasonal naive, smoothed levels, drift) "
        "as changes in the target's units.",
    )
    seasons: tuple[int, ...] | Literal["auto"] = Field(
        "auto",
        description="Seasonal lags in events of one key, e.g. [48, 336]; auto picks them per key "
        "from its cadence; [] disables lags.",
    )

    @field_validator("seasons")
    @classmethod
    def _seasons_positive(cls, value: tuple[int, ...] | str) -> tuple[int, ...] | str:
        # 10**5 events back costs 400 kB per key and target: far past any sensible season.
        if isinstance(value, tuple) and any(m < 1 or m > 100_000 for m in value):
            raise ValueError(f"seasons must lie in [1, 100000] events, got {list(value)}")
        if isinstance(value, tuple) and len(set(value)) != len(value):
            raise ValueError(f"seasons must not repeat, got {list(value)}")
        return value

    def seasons_tuple(self) -> tuple[int, ...] | None:
        """Return the seasons as DerivedFeatures takes them: a tuple, or None for auto."""
        return None if self.seasons == "auto" else tuple(self.seasons)


class IntervalSettings(_Section):
    """Prediction intervals, calibrated online per key (daemon/core/intervals.py)."""

    levels: tuple[float, ...] = Field(
        (0.8, 0.95),
        description="Interval levels every prediction carries, e.g. [0.8, 0.95]; [] disables.",
    )
    # 0.1 per train step, in units of a key's error scale: against 0.05, the 0.95 level's
    # coverage rose from 0.933-0.947 to 0.939-0.949 on Chicago, M3 and nyc_weather at the same
    # interval scores (docs/forecasts.md).
    rate: float = Field(
        0.1,
        gt=0,
        le=1,
        description="Step of the partition's interval quantiles per train step's scored values.",
    )
    warmup: int = Field(
        20, ge=0, description="Scored values after which a key's own error scale weighs half."
    )

    @field_validator("levels")
    @classmethod
    def _levels_inside(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 < level < 1 for level in value):
            raise ValueError(f"levels must lie strictly between 0 and 1, got {list(value)}")
        if len(set(value)) != len(value) or len(value) > 8:
            raise ValueError(f"levels must be distinct, at most 8, got {list(value)}")
        return tuple(sorted(value))


class SnapshotSettings(_Section):
    """Where and how often weights, states and offsets are saved together."""

    directory: Path = Path("snapshots")
    every_steps: int = Field(500, ge=0, description="0 disables the step trigger.")
    every_s: float = Field(60.0, ge=0, description="0 disables the time trigger.")
    keep: int = Field(3, ge=1)
    start_fresh: bool = Field(
        False, description="Start from zero when snapshots exist but none is valid."
    )
    pause_before_rename_s: float = Field(
        0.0, ge=0, description="Testing aid: widen the window in which a crash hits a write."
    )

    @model_validator(mode="after")
    def _some_trigger(self) -> SnapshotSettings:
        if self.every_steps == 0 and self.every_s == 0:
            raise ValueError(
                "snapshot.every_steps: and snapshot.every_s are both 0, so no offset would be "
                "committed before shutdown; set one of them"
            )
        return self


class MetricsSettings(_Section):
    """Prometheus endpoint and the metrics topic."""

    # Loopback unless told: the endpoints carry no authentication. The image and the k8s and
    # systemd examples set 0.0.0.0 explicitly for their scrapers.
    host: str = Field("127.0.0.1", description="Bind address of /metrics, /healthz, /readyz.")
    port: int = Field(9464, ge=0, le=65535, description="0 picks a free port.")
    every_steps: int = Field(50, ge=1)
    prequential_window: int = Field(
        1000, ge=1, description="Scored target values in the rolling prequential MAE."
    )


class HealthSettings(_Section):
    """When /healthz calls the loop stalled."""

    stall_s: float = Field(
        60.0, gt=0, description="/healthz fails after this long without loop progress."
    )


class LogSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"


class Settings(BaseSettings):
    """Every setting of the daemon, read once and frozen."""

    model_config = SettingsConfigDict(
        env_prefix="LSTMD_",
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
    )

    kafka: KafkaSettings = KafkaSettings()
    model: ModelSettings = ModelSettings()
    stream: StreamSettings = StreamSettings()
    intervals: IntervalSettings = IntervalSettings()
    snapshot: SnapshotSettings = SnapshotSettings()
    metrics: MetricsSettings = MetricsSettings()
    health: HealthSettings = HealthSettings()
    log: LogSettings = LogSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment wins over explicit values (the TOML file arrives as init values).
        return env_settings, init_settings


# A cross-field rule names its setting itself: "Value error, kafka.input_topic: must differ ...".
_NAMED_RULE = re.compile(r"^Value error, ([a-z_]+\.[a-z_]+): (.*)$")


def _first_error_line(err: ValidationError) -> str:
    first = err.errors()[0]
    named = _NAMED_RULE.match(first["msg"])
    if named:
        return f"invalid setting {named.group(1)}: {named.group(2)}"
    name = ".".join(str(p) for p in first["loc"]) or "settings"
    value = first.get("input")
    shown = "" if isinstance(value, dict) or "password" in name else f" (got {value!r})"
    return f"invalid setting {name}: {first['msg']}{shown}"


def load_settings(config_file: str | os.PathLike[str] | None = None) -> Settings:
    """Read the TOML file (if any) and the environment into frozen settings.

    Args:
        config_file: path to a TOML file; defaults to `$LSTMD_CONFIG` when set.

    Raises:
        SettingsError: one line naming the first invalid setting.
    """
    path = config_file or os.environ.get(CONFIG_ENV_VAR)
    file_values: dict[str, Any] = {}
    if path:
        try:
            file_values = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SettingsError(f"invalid setting config: file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"invalid setting config: {path} is not TOML: {exc}") from None
    try:
        return Settings(**file_values)
    except ValidationError as exc:
        raise SettingsError(_first_error_line(exc)) from None


def masked_dump(settings: Settings) -> dict[str, Any]:
    """Return the settings as plain data with every secret masked."""
    return settings.model_dump(mode="json")
