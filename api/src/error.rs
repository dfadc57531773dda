//! The error body every 4xx/5xx response carries: `{ "error": code, "message": ... }`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Machine-readable error codes. Clients branch on these, humans read `message`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is syntactically valid JSON but a field is wrong.
    InvalidRequest,
    /// The body is not valid JSON, has unknown fields or wrong types.
    MalformedBody,
    /// A path or query id is not a valid id.
    InvalidId,
    /// No or an unknown bearer token.
    Unauthenticated,
    /// Authenticated but the role does not allow this action.
    Forbidden,
    /// The resource does not exist or the caller may not see it.
    NotFound,
    /// The request conflicts with current state (name taken, resource in use, illegal transition).
    Conflict,
    /// A project quota would be exceeded; the message names the quota.
    QuotaExceeded,
    /// No host has room for the request.
    CapacityExhausted,
    /// The subnet has no free address left.
    AddressesExhausted,
    /// A dependency (database, agent) failed; retrying may help.
    Unavailable,
    /// A machine's power controller (its BMC: IPMI, Redfish; or libvirt)
    /// did not answer in time or refused the connection; the machine's
    /// power state is unknown. The message names the driver and the BMC.
    BmcUnreachable,
    /// A machine's power controller answered but failed the request
    /// (credentials, an unsupported action, still on after a power off).
    BmcFailed,
    /// A bug: the server failed in a way it did not expect.
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::MalformedBody => "malformed_body",
            ErrorCode::InvalidId => "invalid_id",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::CapacityExhausted => "capacity_exhausted",
            ErrorCode::AddressesExhausted => "addresses_exhausted",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::BmcUnreachable => "bmc_unreachable",
            ErrorCode::BmcFailed => "bmc_failed",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP status each code maps to. One table, used by the server.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidRequest | ErrorCode::MalformedBody | ErrorCode::InvalidId => 400,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict
            | ErrorCode::QuotaExceeded
            | ErrorCode::CapacityExhausted
            | ErrorCode::AddressesExhausted => 409,
            ErrorCode::Unavailable => 503,
            ErrorCode::BmcUnreachable => 504,
            ErrorCode::BmcFailed => 502,
            ErrorCode::Internal => 500,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// JSON body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    pub error: ErrorCode,
    pub message: String,
}
