//! The OpenAPI 3.0 description of every route, served at `/openapi.json`. Written by hand next to the
//! router; a test checks that the two list the same routes.

use serde_json::{Value, json};

fn err(desc: &str) -> Value {
    json!({ "description": desc, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } })
}

fn ok(desc: &str, schema: &str) -> Value {
    json!({ "description": desc, "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } } })
}

fn event_param() -> Value {
    json!({ "name": "event", "in": "path", "required": true,
            "schema": { "type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$" },
            "description": "Event id: 1 to 64 of A-Z a-z 0-9 . _ -" })
}

fn ticket_param() -> Value {
    json!({ "name": "ticket", "in": "path", "required": true,
            "schema": { "type": "string", "pattern": "^[0-9a-f]{32}$" },
            "description": "The ticket id (the visitor's secret)" })
}

fn visitor_ticket_op(summary: &str, method_ok: Value) -> Value {
    json!({
        "summary": summary,
        "tags": ["visitor"],
        "parameters": [event_param(), ticket_param()],
        "responses": {
            "200": method_ok,
            "400": err("Invalid event id"),
            "404": err("Unknown event, or no such ticket (a malformed ticket id answers the same)"),
            "429": err("Too many requests from this address (Retry-After)"),
            "503": err("The store is unavailable (Retry-After)")
        }
    })
}

fn admin_op(summary: &str, params: Vec<Value>, responses: Value) -> Value {
    let mut r = responses;
    if let Some(m) = r.as_object_mut() {
        m.insert(
            "401".into(),
            err("Missing or wrong admin bearer token (WWW-Authenticate: Bearer)"),
        );
        m.insert(
            "429".into(),
            err("Too many failed authentications from this address (Retry-After)"),
        );
        m.insert("503".into(), err("The store is unavailable (Retry-After)"));
    }
    json!({ "summary": summary, "tags": ["admin"], "security": [{ "admin": [] }], "parameters": params, "responses": r })
}

fn release_op(summary: &str, tag: &str, admin: bool) -> Value {
    let responses = json!({
        "200": ok("The ticket after the call", "ReleaseResult"),
        "400": err("Invalid event id"),
        "404": err("Unknown event or ticket"),
        "409": err("The ticket's state does not allow it (e.g. completing a waiting ticket)"),
    });
    if admin {
        admin_op(summary, vec![event_param(), ticket_param()], responses)
    } else {
        let mut r = responses;
        if let Some(m) = r.as_object_mut() {
            m.insert(
                "429".into(),
                err("Too many requests from this address (Retry-After)"),
            );
            m.insert("503".into(), err("The store is unavailable (Retry-After)"));
        }
        json!({ "summary": summary, "tags": [tag], "parameters": [event_param(), ticket_param()], "responses": r })
    }
}

fn event_state_op(summary: &str) -> Value {
    admin_op(
        summary,
        vec![event_param()],
        json!({ "200": ok("The event after the change", "EventStats"), "400": err("Invalid event id"), "404": err("Unknown event") }),
    )
}

/// The document.
pub fn document() -> Value {
    let mut doc = paths_and_schemas();
    add_operation_ids_and_links(&mut doc);
    doc
}

/// The `operationId` of an operation: its method and path, e.g. `get_events_event_tickets_ticket` for
/// `GET /v1/events/{event}/tickets/{ticket}`.
pub fn operation_id(method: &str, path: &str) -> String {
    let mut id = method.to_lowercase();
    for seg in path.split('/').filter(|s| !s.is_empty() && *s != "v1") {
        id.push('_');
        id.extend(
            seg.chars()
                .filter(|c| *c != '{' && *c != '}')
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }),
        );
    }
    id.replace("__", "_")
}

/// Gives every operation an `operationId` and links the operations that create something to those that
/// use it (a join's ticket, a configured event), so clients and stateful fuzzers can follow them.
fn add_operation_ids_and_links(doc: &mut Value) {
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for (path, ops) in paths.iter_mut() {
            if let Some(ops) = ops.as_object_mut() {
                for (method, op) in ops.iter_mut() {
                    if let Some(op) = op.as_object_mut() {
                        op.insert("operationId".into(), json!(operation_id(method, path)));
                    }
                }
            }
        }
    }
    let link = |method: &str, path: &str, with_ticket: bool| {
        let mut parameters = json!({ "event": "$request.path.event" });
        if with_ticket {
            parameters["ticket"] = json!("$response.body#/ticket");
        }
        json!({ "operationId": operation_id(method, path), "parameters": parameters })
    };
    let ticket_links = json!({
        "status": link("get", "/v1/events/{event}/tickets/{ticket}", true),
        "heartbeat": link("post", "/v1/events/{event}/tickets/{ticket}/heartbeat", true),
        "leave": link("post", "/v1/events/{event}/tickets/{ticket}/leave", true),
        "complete": link("post", "/v1/events/{event}/tickets/{ticket}/complete", true),
        "adminRead": link("get", "/v1/admin/events/{event}/tickets/{ticket}", true),
        "adminComplete": link("post", "/v1/admin/events/{event}/tickets/{ticket}/complete", true),
        "adminRevoke": link("post", "/v1/admin/events/{event}/tickets/{ticket}/revoke", true),
    });
    let event_links = json!({
        "join": link("post", "/v1/events/{event}/tickets", false),
        "publicEvent": link("get", "/v1/events/{event}", false),
        "read": link("get", "/v1/admin/events/{event}", false),
        "pause": link("post", "/v1/admin/events/{event}/pause", false),
        "resume": link("post", "/v1/admin/events/{event}/resume", false),
        "close": link("post", "/v1/admin/events/{event}/close", false),
        "revocations": link("get", "/v1/admin/events/{event}/revocations", false),
        "delete": link("delete", "/v1/admin/events/{event}", false),
    });
    for (path, method, links) in [
        ("/v1/events/{event}/tickets", "post", &ticket_links),
        ("/v1/admin/events/{event}", "put", &event_links),
    ] {
        for status in ["200", "201"] {
            if let Some(r) = doc
                .pointer_mut(&format!(
                    "/paths/{}/{method}/responses/{status}",
                    path.replace('~', "~0").replace('/', "~1")
                ))
                .and_then(Value::as_object_mut)
            {
                r.insert("links".into(), links.clone());
            }
        }
    }
}

fn paths_and_schemas() -> Value {
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Dispatcher waiting room",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Visitor and admin API of the virtual waiting room. Errors are JSON bodies {\"error\": {\"code\", \"message\"}} with stable codes."
        },
        "paths": {
            "/v1/events/{event}/tickets": {
                "post": {
                    "summary": "Join the event's queue",
                    "tags": ["visitor"],
                    "parameters": [event_param()],
                    "requestBody": { "required": false, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/JoinRequest" } } } },
                    "responses": {
                        "200": ok("A fail-open admission while the store is down", "Ticket"),
                        "201": ok("A new ticket", "Ticket"),
                        "400": err("Invalid event id, user id or body"),
                        "403": err("The event's queueing mode rejects new joins"),
                        "404": err("Unknown event"),
                        "409": err("The event is closed to new joins, or this user already holds a live ticket (already_joined; its secret is not revealed)"),
                        "408": err("The body did not arrive within the body timeout (the connection closes)"),
                        "413": err("Body too large"),
                        "415": err("A body without Content-Type: application/json"),
                        "429": err("Too many joins from this address or user (Retry-After)"),
                        "503": err("The store is unavailable and the event fails closed (Retry-After)")
                    }
                }
            },
            "/v1/events/{event}/tickets/{ticket}": {
                "get": visitor_ticket_op("Ticket status (counts as presence)", ok("The ticket", "Ticket"))
            },
            "/v1/events/{event}/tickets/{ticket}/heartbeat": {
                "post": visitor_ticket_op("Presence while waiting", ok("The ticket", "Ticket"))
            },
            "/v1/events/{event}/tickets/{ticket}/leave": {
                "post": release_op("Leave the queue or give up the slot", "visitor", false)
            },
            "/v1/events/{event}/tickets/{ticket}/complete": {
                "post": release_op("Complete the session, freeing the slot for the next visitor", "visitor", false)
            },
            "/v1/events/{event}/tickets/{ticket}/live": {
                "get": visitor_ticket_op(
                    "Live updates (server-sent events: position, admitted with the token, final); an open stream counts as presence. Streams are capped per address (429 too_many_streams) and in total (503 too_many_streams): poll the status then",
                    json!({ "description": "An event stream", "content": { "text/event-stream": { "schema": { "type": "string" } } } })
                )
            },
            "/v1/events/{event}": {
                "get": {
                    "summary": "Public facts of an event (state, queue length, admission rate)",
                    "tags": ["visitor"],
                    "parameters": [event_param()],
                    "responses": {
                        "200": ok("The event", "PublicEvent"),
                        "400": err("Invalid event id"),
                        "404": err("Unknown event"),
                        "429": err("Too many requests from this address (Retry-After)"),
                        "503": err("The store is unavailable (Retry-After)")
                    }
                }
            },
            "/v1/admin/events": {
                "get": admin_op("List events with counts", vec![], json!({ "200": { "description": "Events", "content": { "application/json": { "schema": { "type": "array", "items": { "$ref": "#/components/schemas/EventStats" } } } } } }))
            },
            "/v1/admin/events/{event}": {
                "get": admin_op("Event settings, counts and admission rate", vec![event_param()], json!({ "200": ok("The event", "EventStats"), "400": err("Invalid event id"), "404": err("Unknown event") })),
                "put": {
                    "summary": "Create or configure an event",
                    "tags": ["admin"],
                    "security": [{ "admin": [] }],
                    "parameters": [event_param()],
                    "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/EventSettings" } } } },
                    "responses": {
                        "200": ok("Reconfigured", "EventStats"),
                        "201": ok("Created", "EventStats"),
                        "400": err("Invalid event id or settings"),
                        "401": err("Missing or wrong admin bearer token"),
                        "413": err("Body too large"),
                        "415": err("Not a JSON body"),
                        "503": err("The store is unavailable (Retry-After)")
                    }
                },
                "delete": admin_op(
                    "Delete an event and its tickets",
                    vec![event_param(), json!({ "name": "force", "in": "query", "required": false, "schema": { "type": "boolean" }, "description": "Delete even with waiting or admitted tickets" })],
                    json!({ "200": ok("Deleted", "DeletedEvent"), "400": err("Invalid event id or query"), "404": err("Unknown event"), "409": err("The event has live tickets and force is not set") })
                )
            },
            "/v1/admin/events/{event}/pause": { "post": event_state_op("Pause admissions (joins still queue)") },
            "/v1/admin/events/{event}/resume": { "post": event_state_op("Open the event") },
            "/v1/admin/events/{event}/close": { "post": event_state_op("Close to new joins (the queue keeps draining)") },
            "/v1/admin/events/{event}/tickets/{ticket}": {
                "get": admin_op("Read a ticket (no presence)", vec![event_param(), ticket_param()], json!({ "200": ok("The ticket", "Ticket"), "400": err("Invalid event id"), "404": err("Unknown event or ticket") }))
            },
            "/v1/admin/events/{event}/tickets/{ticket}/complete": { "post": release_op("Complete a ticket for the shop", "admin", true) },
            "/v1/admin/events/{event}/tickets/{ticket}/revoke": { "post": release_op("Revoke a ticket: the slot frees and its token is listed as revoked", "admin", true) },
            "/v1/admin/events/{event}/revocations": {
                "get": admin_op("Tokens revoked while admitted that have not expired", vec![event_param()], json!({ "200": ok("The list", "RevocationList"), "400": err("Invalid event id"), "404": err("Unknown event") }))
            },
            "/v1/admin/keys": {
                "get": admin_op("Signing keys", vec![], json!({ "200": { "description": "Keys", "content": { "application/json": { "schema": { "type": "array", "items": { "$ref": "#/components/schemas/Key" } } } } } }))
            },
            "/v1/admin/keys/rotate": {
                "post": admin_op("Add a signing key (published at once, signing after every server reloaded)", vec![], json!({ "200": { "description": "Keys after the rotation", "content": { "application/json": { "schema": { "type": "array", "items": { "$ref": "#/components/schemas/Key" } } } } }, "409": err("Keys live in memory only") }))
            },
            "/.well-known/jwks.json": {
                "get": { "summary": "Public keys that verify entry tokens (JWKS)", "tags": ["tokens"], "responses": { "200": ok("The key set", "Jwks") } }
            },
            "/openapi.json": {
                "get": { "summary": "This document", "tags": ["ops"], "responses": { "200": { "description": "OpenAPI", "content": { "application/json": { "schema": { "type": "object" } } } } } }
            },
            "/healthz": {
                "get": { "summary": "The process is up", "tags": ["ops"], "responses": { "200": { "description": "Up", "content": { "application/json": { "schema": { "type": "object" } } } } } }
            },
            "/readyz": {
                "get": { "summary": "The store is reachable and the promoter runs", "tags": ["ops"], "responses": {
                    "200": { "description": "Ready", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Readiness" } } } },
                    "503": { "description": "Not ready", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Readiness" } } } } } }
            },
            "/metrics": {
                "get": { "summary": "Prometheus metrics", "tags": ["ops"], "responses": {
                    "200": { "description": "Text exposition format", "content": { "text/plain": { "schema": { "type": "string" } } } },
                    "404": err("No metrics recorder in this process, or metrics served on DISPATCHER_METRICS_ADDR instead (metrics_elsewhere)") } }
            },
            "/wait/{event}": {
                "get": { "summary": "The visitor waiting page", "tags": ["pages"], "parameters": [event_param()],
                    "responses": { "200": { "description": "HTML", "content": { "text/html": { "schema": { "type": "string" } } } }, "400": err("Invalid event id") } }
            },
            "/dashboard": {
                "get": { "summary": "The operator dashboard (asks for the admin token)", "tags": ["pages"],
                    "responses": { "200": { "description": "HTML", "content": { "text/html": { "schema": { "type": "string" } } } } } }
            }
        },
        "components": {
            "securitySchemes": { "admin": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "Error": { "type": "object", "required": ["error"], "properties": { "error": { "type": "object", "required": ["code", "message"], "properties": { "code": { "type": "string" }, "message": { "type": "string" } } } } },
                "JoinRequest": { "type": "object", "additionalProperties": false, "properties": { "user": { "type": "string", "minLength": 1, "maxLength": 128,
                    "pattern": "^[^\\u0000-\\u0020\\u007f-\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]+$",
                    "description": "Shop's user id: 1 to 128 bytes of UTF-8 without control characters or whitespace; joining twice returns the same live ticket" } } },
                "TicketState": { "type": "string", "enum": ["pre_queued", "waiting", "admitted", "completed", "expired", "abandoned", "left", "revoked"] },
                "Ticket": { "type": "object", "required": ["event", "ticket", "state", "seq", "joined_at_ms"], "properties": {
                    "event": { "type": "string" }, "ticket": { "type": "string" }, "state": { "$ref": "#/components/schemas/TicketState" },
                    "seq": { "type": "integer" }, "user": { "type": "string" },
                    "position": { "type": "integer", "nullable": true }, "ahead": { "type": "integer", "nullable": true },
                    "estimated_wait_s": { "type": "integer", "nullable": true, "description": "null = unknown" },
                    "joined_at_ms": { "type": "integer" }, "admitted_at_ms": { "type": "integer", "nullable": true },
                    "expires_at_ms": { "type": "integer", "nullable": true }, "ended_at_ms": { "type": "integer", "nullable": true },
                    "token": { "type": "string", "description": "EdDSA JWT while admitted" }, "fail_open": { "type": "boolean" } } },
                "ReleaseResult": { "type": "object", "required": ["ticket", "changed", "admitted_next"], "properties": {
                    "ticket": { "$ref": "#/components/schemas/Ticket" }, "changed": { "type": "boolean" }, "admitted_next": { "type": "integer" } } },
                "PublicEvent": { "type": "object", "properties": {
                    "event": { "type": "string" }, "state": { "type": "string", "enum": ["open", "paused", "closed"] },
                    "queue_mode": { "type": "string", "enum": ["fifo", "passthrough", "reject", "prequeue"] },
                    "waiting": { "type": "integer" }, "admitted": { "type": "integer" }, "capacity": { "type": "integer" },
                    "admissions_per_s": { "type": "number", "nullable": true },
                    "redirect_origins": { "type": "array", "items": { "type": "string" } },
                    "pre_queued": { "type": "integer" },
                    "starts_at_ms": { "type": "integer", "nullable": true } } },
                "EventSettings": { "type": "object", "required": ["capacity"], "additionalProperties": false, "properties": {
                    "capacity": { "type": "integer", "minimum": 1, "maximum": 10000000 },
                    "rate_per_minute": { "type": "integer", "minimum": 1, "maximum": 600000000, "nullable": true },
                    "session_ttl_ms": { "type": "integer", "minimum": 100, "maximum": 604800000 },
                    "abandon_timeout_ms": { "type": "integer", "minimum": 1000, "maximum": 604800000 },
                    "state": { "type": "string", "enum": ["open", "paused", "closed"] },
                    "retention_ms": { "type": "integer", "minimum": 1000, "maximum": 2592000000u64 },
                    "queue_mode": { "type": "string", "enum": ["fifo", "passthrough", "reject", "prequeue"] },
                    "fail_open": { "type": "boolean" },
                    "starts_at_ms": { "type": "integer", "nullable": true, "minimum": 1, "maximum": 9999999999999u64, "description": "When a prequeue event starts: its pre-queue is shuffled into the line (required for prequeue)" } } },
                "EventStats": { "type": "object", "properties": {
                    "id": { "type": "string" }, "settings": { "$ref": "#/components/schemas/EventSettings" },
                    "joined": { "type": "integer" }, "waiting": { "type": "integer" }, "admitted": { "type": "integer" },
                    "finished": { "type": "integer" }, "active": { "type": "boolean" }, "pre_queued": { "type": "integer" },
                    "totals": { "type": "object", "properties": {
                        "admitted": { "type": "integer" }, "completed": { "type": "integer" }, "expired": { "type": "integer" },
                        "abandoned": { "type": "integer" }, "left": { "type": "integer" }, "revoked": { "type": "integer" } } },
                    "admissions_per_s": { "type": "number", "nullable": true } } },
                "DeletedEvent": { "type": "object", "properties": { "event": { "type": "string" }, "tickets": { "type": "integer" } } },
                "RevocationList": { "type": "object", "properties": { "event": { "type": "string" }, "revoked": { "type": "array", "items": {
                    "type": "object", "properties": { "ticket": { "type": "string" }, "expires_at_ms": { "type": "integer" } } } } } },
                "Key": { "type": "object", "properties": { "kid": { "type": "string" }, "active_from_ms": { "type": "integer" } } },
                "Jwks": { "type": "object", "properties": { "keys": { "type": "array", "items": { "type": "object" } } } },
                "Readiness": { "type": "object", "description": "ok/unreachable for the store, running/stopped for the promoter, and one field per other engine the process runs (e.g. outbox: running, connecting or stopped); not ready while any is not ok or running", "properties": { "store": { "type": "string" }, "promoter": { "type": "string" }, "outbox": { "type": "string", "enum": ["running", "connecting", "stopped"] } }, "additionalProperties": { "type": "string" } }
            }
        }
    })
}

/// Serves the document.
pub async fn serve() -> axum::Json<Value> {
    axum::Json(document())
}

/// The (method, path) pairs the document describes, for the router consistency test.
pub fn operations() -> Vec<(String, String)> {
    let doc = document();
    let mut out = Vec::new();
    if let Some(paths) = doc.get("paths").and_then(Value::as_object) {
        for (path, ops) in paths {
            if let Some(ops) = ops.as_object() {
                for method in ops.keys() {
                    out.push((method.to_uppercase(), path.clone()));
                }
            }
        }
    }
    out.sort();
    out
}
