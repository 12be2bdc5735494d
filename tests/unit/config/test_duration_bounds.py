"""Durations and row counts have upper bounds (config/layered.py, `Seconds`): a value past them stopped the node
or the gateway later with an overflow that named no setting (ledger_days = 1e6: "Python int too large to convert
to SQLite INTEGER"; the gateway's max_timeout = 1e10: every task request a 500)."""

from __future__ import annotations

import annotated_types
import pytest
from pydantic_settings import BaseSettings

from config.layered import SECONDS_MAX
from config.settings import ConfigError, Settings
from node.gateway.settings import GatewaySettings


def upper_bound(settings: type[BaseSettings], name: str) -> float | None:
    bounds = [m.le for m in settings.model_fields[name].metadata if isinstance(m, annotated_types.Le)]
    bounds += [m.lt for m in settings.model_fields[name].metadata if isinstance(m, annotated_types.Lt)]
    return min(bounds, default=None)


@pytest.mark.parametrize("settings", [Settings, GatewaySettings])
def test_every_setting_in_seconds_is_bounded(settings: type[BaseSettings]) -> None:
    durations = [
        name
        for name, field in settings.model_fields.items()
        if field.annotation is float and any(unit in (field.description or "").lower() for unit in ("second", "(s)"))
    ]
    assert {"deadline_horizon", "max_wait" if settings is GatewaySettings else "result_grace"} <= set(durations)
    unbounded = [name for name in durations if (upper_bound(settings, name) or float("inf")) > SECONDS_MAX]
    assert unbounded == []


@pytest.mark.parametrize(
    "overrides, named",
    [
        ({"ledger_days": "1e6"}, "ledger_days"),
        ({"result_grace": "1e11"}, "result_grace"),
        ({"deadline_horizon": "1e300"}, "deadline_horizon"),
        ({"exec_start_timeout": "1e305"}, "exec_start_timeout"),
        ({"ledger_max_rows": str(10**23)}, "ledger_max_rows"),
    ],
)
def test_a_duration_past_its_bound_names_the_setting(overrides: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=f"invalid setting '{named}'.*less than or equal"):
        Settings.load(**overrides)


def test_the_gateway_refuses_a_task_timeout_no_deadline_can_carry() -> None:
    with pytest.raises(ConfigError, match="invalid setting 'max_timeout'.*less than or equal"):
        GatewaySettings.load(
            peers=["/ip4/127.0.0.1/tcp/4001/p2p/16Uiu2HAmQsygrxXTAEWmVauQbVwszwwdMqnZAyquWWwFCWeMjNWz"],
            max_timeout="1e10",
        )
    assert (
        GatewaySettings.load(
            peers=["/ip4/127.0.0.1/tcp/4001/p2p/16Uiu2HAmQsygrxXTAEWmVauQbVwszwwdMqnZAyquWWwFCWeMjNWz"]
        ).max_timeout
        == 600
    )
