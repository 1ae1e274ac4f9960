"""Kafka client helpers shared by the ``kafka`` source and the ``kafka`` tool (aiokafka).

- :class:`KafkaSecurityConfig`: the ``security:`` block both accept;
- :func:`client_options`: the keyword arguments every aiokafka consumer and producer gets;
- :func:`stop_client`: stop a consumer or producer within a bound, never raising.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.helpers import create_ssl_context
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["CLIENT_STOP_SECONDS", "KafkaSecurityConfig", "client_options", "stop_client"]

CLIENT_STOP_SECONDS = 10.0


class KafkaSecurityConfig(BaseModel):
    """``security:`` of Kafka sources and tools (passed through to aiokafka)."""

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="How to talk to the brokers: plain TCP, TLS, SASL, or SASL over TLS."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism with a SASL protocol; null: PLAIN."
    )
    username: str | None = Field(None, description="SASL user; use ${VAR}.")
    password: str | None = Field(None, description="SASL password; use ${VAR}. Never logged or shown.")
    ssl_cafile: str | None = Field(None, description="CA bundle for SSL.")
    ssl_certfile: str | None = Field(None, description="Client certificate for SSL.")
    ssl_keyfile: str | None = Field(None, description="Client key for SSL.")


def client_options(bootstrap_servers: str | list[str], security: KafkaSecurityConfig) -> dict[str, Any]:
    """Keyword arguments shared by aiokafka consumers and producers."""
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap_servers,
        "security_protocol": security.protocol,
    }
    if security.protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = create_ssl_context(
            cafile=security.ssl_cafile, certfile=security.ssl_certfile, keyfile=security.ssl_keyfile
        )
    if security.protocol.startswith("SASL"):
        options["sasl_mechanism"] = security.sasl_mechanism or "PLAIN"
        options["sasl_plain_username"] = security.username
        options["sasl_plain_password"] = security.password
    return options


async def stop_client(
    client: AIOKafkaConsumer | AIOKafkaProducer | None, logger: logging.Logger, **fields: Any
) -> None:
    """Stop an aiokafka client within a bound (the idempotent producer can wait forever for brokers
    that are gone); a failure is logged with ``fields``, never raised."""
    if client is None:
        return
    try:
        async with asyncio.timeout(CLIENT_STOP_SECONDS):
            await client.stop()
    except Exception as exc:
        logger.warning("kafka client stop failed", extra={"fields": {**fields, "error": repr(exc)}})
