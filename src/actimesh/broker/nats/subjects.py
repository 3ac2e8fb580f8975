"""MQTT topics and NATS subjects: the rule of the server's MQTT listener (2.10 and
later), in one place, so that a device id with a dot is the same device on both sides:
``/`` between levels becomes ``.``, a ``.`` inside a level becomes ``//``, an empty
level becomes ``/``; ``+`` and ``#`` become ``*`` and ``>``. Also the names of what the
listener keeps in JetStream, and safe names for consumers.
"""

from __future__ import annotations

import hashlib
import re

__all__ = [
    "MQTT_QOS1_PREFIX",
    "MQTT_QOS1_STREAM",
    "MQTT_QOS_HEADER",
    "MQTT_RETAINED_PREFIX",
    "MQTT_RETAINED_STREAM",
    "jetstream_name",
    "subject_to_topic",
    "topic_to_subject",
]

#: Where the MQTT listener keeps QoS 1 messages: its stream, and the subject prefix.
MQTT_QOS1_STREAM = "$MQTT_msgs"
MQTT_QOS1_PREFIX = "$MQTT.msgs."
#: Where it keeps retained messages (the last of each topic), in the same way.
MQTT_RETAINED_STREAM = "$MQTT_rmsgs"
MQTT_RETAINED_PREFIX = "$MQTT.rmsgs."
#: The header by which the server knows a message's MQTT QoS.
MQTT_QOS_HEADER = "Nmqtt-Pub"


def topic_to_subject(topic: str) -> str:
    """The NATS subject the MQTT listener uses for an MQTT topic or filter."""
    if any(c.isspace() for c in topic):
        raise ValueError(f"MQTT topic {topic!r} has whitespace: no NATS subject for it")
    tokens = []
    for level in topic.split("/"):
        if level == "+":
            tokens.append("*")
        elif level == "#":
            tokens.append(">")
        elif level == "":
            tokens.append("/")
        else:
            tokens.append(level.replace(".", "//"))
    return ".".join(tokens)


def subject_to_topic(subject: str) -> str:
    """The MQTT topic of a NATS subject (the inverse of :func:`topic_to_subject`)."""
    return "/".join("" if t == "/" else t.replace("//", ".") for t in subject.split("."))


NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def jetstream_name(*parts: str) -> str:
    """A stream or consumer name from ``parts``: readable, unique, and free of what a
    name may not hold (``.``, ``*``, ``>``, path separators)."""
    joined = "|".join(parts)
    digest = hashlib.blake2s(joined.encode(), digest_size=5).hexdigest()
    readable = NAME_UNSAFE.sub("_", "_".join(parts).replace("*", "any").replace(">", "all"))
    return f"{readable[:80]}-{digest}"
