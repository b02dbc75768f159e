"""The audit's rules: stable ids, severities and the explanation ``--explain`` prints.

A rule id never changes meaning once shipped; retire it instead. Severities may differ
by OCPP version (the one-outstanding-CALL rule is a SHOULD in 1.6, a SHALL in 2.x), so
a finding carries its own severity and the rule only gives the default.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class Severity(IntEnum):
    INFO = 10
    WARNING = 20
    ERROR = 30

    @classmethod
    def parse(cls, text: str) -> Severity:
        return cls[text.upper()]

    def __str__(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Rule:
    id: str
    severity: Severity
    title: str
    explanation: str


def _rule(rule_id: str, severity: Severity, title: str, explanation: str) -> Rule:
    return Rule(rule_id, severity, title, " ".join(explanation.split()))


E, W = Severity.ERROR, Severity.WARNING

RULES: dict[str, Rule] = {
    r.id: r
    for r in [
        _rule(
            "malformed-frame",
            E,
            "Frame is not a valid OCPP-J RPC frame",
            """
            The message is not JSON, not an array, has the wrong number of elements for its
            message type, an unknown message type, or fields of the wrong JSON type (see the
            frame's parse_status). Receivers may drop such frames silently (1.6) or answer
            with a CALLERROR (2.x); either way the sender's request is lost.""",
        ),
        _rule(
            "message-too-large",
            E,
            "Message exceeds the proxy's size limit",
            """
            The message was larger than --max-message-size; both legs were closed with 1009.
            Oversized fields have crashed CSMSs; the frame is recorded by its length only.""",
        ),
        _rule(
            "message-id-type",
            E,
            "Message id is not a string",
            """
            OCPP-J message ids are strings (at most 36 characters). A number or null id
            breaks the pairing of responses in most implementations.""",
        ),
        _rule(
            "message-id-too-long",
            E,
            "Message id longer than 36 characters",
            """
            OCPP-J limits message ids to 36 characters (a UUID). Longer ids are rejected by
            strict receivers.""",
        ),
        _rule(
            "message-id-empty",
            E,
            "Message id is empty",
            """
            An empty message id cannot be unique and cannot be paired with its response.""",
        ),
        _rule(
            "message-id-reused",
            E,
            "Message id reused",
            """
            Message ids must be unique per sender: per connection in OCPP 1.6, and across all
            connections of the same charger identity in 2.0.1 (retries included). OCPP 2.1
            lets a retry after a timeout reuse the id of the CALL it repeats; any other reuse
            is a finding. Reused ids make responses ambiguous. ocproxy remembers, per
            sender, the last 128 ids exactly and numeric ids (counters) as ranges, so that
            memory stays bounded on connections that last for weeks: a counter starting
            again is found however long ago, another id only among the last 128.""",
        ),
        _rule(
            "outstanding-call",
            E,
            "More than one outstanding CALL in one direction",
            """
            A sender may have only one CALL waiting for its answer per direction (1.6: SHOULD
            NOT, a warning; 2.x: SHALL NOT, an error). CALLs crossing in opposite directions
            are legal, and SEND (2.1) is exempt. Receivers that process one CALL at a time
            may time out or answer out of order. A CALL that got no answer within the
            response timeout (--response-timeout) is reported once as unanswered-call and
            no longer counts as outstanding: the sender may move on after it.""",
        ),
        _rule(
            "unanswered-call",
            E,
            "CALL not answered within the response timeout",
            """
            No CALLRESULT or CALLERROR came within the response timeout (--response-timeout,
            default 30 s) of the CALL, measured on the recording's own timeline: the
            finding is made by the first frame or close of the connection after that
            deadline (or the end of the recording), and its time is the deadline. Reported
            once per CALL; an answer that comes even later is not reported again as
            late-response. The sender has given up on it; a charger may retry, queue its
            messages or go offline.""",
        ),
        _rule(
            "unknown-response-id",
            E,
            "Response answers no CALL",
            """
            A CALLRESULT whose id matches no CALL the other side sent on this connection. The
            usual cause is an answer after the caller gave up, or an id the responder
            rewrote; naive clients then pair every later answer with the wrong CALL.""",
        ),
        _rule(
            "callerror-without-call",
            W,
            "CALLERROR that answers no CALL",
            """
            A CALLERROR must answer a CALL (a CALLRESULTERROR a CALLRESULT). OCPP 2.x allows
            id "-1" for an error about a message whose id could not be read; other unmatched
            CALLERRORs point at a confused peer.""",
        ),
        _rule(
            "duplicate-response",
            E,
            "CALL answered twice",
            """
            A second response for a CALL that already had one. Receivers either drop it or,
            worse, pair it with the next CALL.""",
        ),
        _rule(
            "late-response",
            W,
            "Response after the timeout",
            """
            The answer came later than the configured response timeout (default 30 s, the
            ocpp package's default). Most callers have given up by then and may already have
            retried. When something else happened on the connection after the deadline
            before the answer came, the CALL was already reported as unanswered-call and the
            answer is not reported again.""",
        ),
        _rule(
            "message-type-not-in-version",
            E,
            "Message type not defined for this version",
            """
            CALLRESULTERROR (5) and SEND (6) exist only in OCPP 2.1. Earlier receivers ignore
            or reject them.""",
        ),
        _rule(
            "response-to-send",
            E,
            "Response to a SEND",
            """
            SEND (2.1) messages must never be answered.""",
        ),
        _rule(
            "error-code-spelling",
            E,
            "Error code not defined for this version",
            """
            1.6 spells FormationViolation and OccurenceConstraintViolation (typos kept by the
            errata); 2.0.1 and 2.1 use FormatViolation and add RpcFrameworkError and
            MessageTypeNotSupported. Implementations disagree on Occurence/Occurrence in
            2.0.1, so both are accepted there with an info finding.""",
        ),
        _rule(
            "unknown-action",
            E,
            "Action not defined for this version",
            """
            The action has no schema in the negotiated OCPP version (actions are
            case-sensitive and have no "Request" suffix). Receivers answer NotImplemented or
            NotSupported.""",
        ),
        _rule(
            "no-subprotocol",
            W,
            "No OCPP subprotocol negotiated",
            """
            The charger offered no Sec-WebSocket-Protocol, or the CSMS chose none. Without
            one, neither side knows which OCPP version the other speaks; the audit cannot
            check schemas for the connection. A connection refused at the TLS handshake
            (handshake_status 495), or given up before its HTTP request was complete
            (recorded without a path), sent no request, so neither this nor any other
            rule about the handshake applies to it.""",
        ),
        _rule(
            "unknown-subprotocol",
            W,
            "Unknown subprotocol offered",
            """
            The charger offered a subprotocol that is not ocpp1.6, ocpp2.0, ocpp2.0.1 or
            ocpp2.1 (spelling and case matter).""",
        ),
        _rule(
            "identity-invalid",
            E,
            "Charger identity not allowed in OCPP 2.x",
            """
            OCPP 2.x limits the identity (last URL path segment) to 48 characters and
            forbids ':' because it is used as the Basic-auth user name.""",
        ),
        _rule(
            "suspicious-identity",
            E,
            "Charger identity is not a plain path segment",
            """
            After percent-decoding, the identity (the last segment of the URL path)
            contains '/', NUL or another control character, is empty, or is '.' or '..'.
            Such identities come from a misconfigured charger or from an attempt at path
            traversal or log injection against the CSMS (%2F, %00, %0A, ..). ocproxy
            forwards the path unchanged and records the identity exactly; CSMSs that use
            the identity in file names, URLs or log lines may misbehave.""",
        ),
        _rule(
            "basic-auth-username-mismatch",
            W,
            "Basic-auth user name differs from identity",
            """
            In security profiles 1 and 2 the Basic-auth user name must equal the charger
            identity; CSMSs that check it will refuse the connection.""",
        ),
        _rule(
            "client-cert-identity-mismatch",
            E,
            "Client certificate names another identity",
            """
            In security profile 3 the charger's certificate subject common name must be its
            identity (the last URL path segment). A mismatch means a certificate shared
            between chargers or a charger configured with another's identity;
            --strict-client-cert refuses such connections.""",
        ),
        _rule(
            "timestamp-without-zone",
            E,
            "Timestamp without a time zone",
            """
            OCPP date-time values must carry a zone (Z or an offset). Without one, the time is
            ambiguous by hours and transaction times are misread.""",
        ),
        _rule(
            "heartbeat-drift",
            W,
            "Heartbeat interval differs from the configured one",
            """
            The charger's Heartbeats are further apart (or closer) than the interval the
            CSMS gave in the BootNotification response, by more than 25% and 5 seconds.
            Missing heartbeats make a CSMS mark a charger offline.""",
        ),
        _rule(
            "schema-required",
            E,
            "Required field missing",
            """
            The payload lacks a field the action's JSON schema requires.""",
        ),
        _rule(
            "schema-additional-property",
            E,
            "Field not in the schema",
            """
            The payload has a field the schema does not define. 2.x schemas and the 1.6
            errata forbid extra fields (except customData in 2.x).""",
        ),
        _rule(
            "schema-enum",
            E,
            "Value not in the enumeration",
            """
            An enumerated field has a value the schema does not list. Enumerations are
            case-sensitive: "accepted" is not "Accepted".""",
        ),
        _rule(
            "schema-type",
            E,
            "Field of the wrong JSON type",
            """
            A field has the wrong JSON type, e.g. a number sent as a string ("12.5" instead
            of 12.5) or an integer beyond the allowed range.""",
        ),
        _rule(
            "schema-max-length",
            E,
            "String or array too long",
            """
            A string exceeds the schema's maxLength (or an array its maxItems).""",
        ),
        _rule(
            "schema-format",
            E,
            "Value does not match its format",
            """
            A string does not match the schema's format (date-time, URI, ...).""",
        ),
        _rule(
            "schema-violation",
            E,
            "Payload violates the schema",
            """
            The payload violates its action's JSON schema in a way the more specific schema
            rules do not name (minimum, pattern, multipleOf, ...).""",
        ),
    ]
}


def rule(rule_id: str) -> Rule:
    return RULES[rule_id]
