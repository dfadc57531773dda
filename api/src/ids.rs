//! Typed identifiers: one newtype per resource kind so that an instance id can
//! never be passed where a volume id is expected. On the wire every id is a
//! UUID string; parsing a malformed one is a typed error, never a panic.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A string that is not a valid id for the named resource kind.
#[derive(Debug, Clone, thiserror::Error)]
#[error("`{value}` is not a valid {kind} id (expected a UUID)")]
pub struct IdParseError {
    pub kind: &'static str,
    pub value: String,
}

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// The resource kind, as used in error messages.
            pub const KIND: &'static str = $kind;

            pub fn new() -> Self {
                Self(Uuid::new_v4())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self).map_err(|_| IdParseError {
                    kind: $kind,
                    value: s.chars().take(64).collect(),
                })
            }
        }

        impl From<Uuid> for $name {
            fn from(u: Uuid) -> Self {
                Self(u)
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                        utoipa::openapi::KnownFormat::Uuid,
                    )))
                    .description(Some(concat!("Identifier of a ", $kind, ".")))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

typed_id!(ProjectId, "project");
typed_id!(UserId, "user");
typed_id!(TokenId, "token");
typed_id!(FlavorId, "flavor");
typed_id!(ImageId, "image");
typed_id!(KeypairId, "keypair");
typed_id!(NetworkId, "network");
typed_id!(SubnetId, "subnet");
typed_id!(InstanceId, "instance");
typed_id!(VolumeId, "volume");
typed_id!(SnapshotId, "snapshot");
typed_id!(GroupId, "anti-affinity group");
typed_id!(RackId, "rack");
typed_id!(HostId, "host");
typed_id!(AuditId, "audit record");
typed_id!(EnrollmentTokenId, "enrollment token");
typed_id!(MachineId, "machine");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_id_is_an_error_naming_the_kind() {
        let err = "nope".parse::<InstanceId>().unwrap_err();
        assert_eq!(err.kind, "instance");
        assert!(err.to_string().contains("not a valid instance id"));
    }

    #[test]
    fn ids_round_trip_as_plain_uuid_strings() {
        let id = VolumeId::new();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{}\"", id.0));
        let back: VolumeId = serde_json::from_str(&json).unwrap();
        assert_eq!(back, id);
    }
}
