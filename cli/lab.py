"""The lab admin's commands, registered on `grid`: broker-config, doctor, service, metrics, dashboard."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the lab commands to the `grid` app (their modules load only when one runs)."""
    from cli import brokerconfig, dashboard, doctor, metrics, service

    app.command("broker-config")(brokerconfig.broker_config)
    app.command("doctor")(doctor.doctor)
    app.add_typer(service.app, name="service")
    app.command("metrics")(metrics.metrics)
    app.command("dashboard")(dashboard.dashboard)
