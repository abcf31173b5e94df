//! Which activation holds each policy, across partitions: a compare-and-swap in a
//! global sled tree.

use serde::{Deserialize, Serialize};

use super::to_json;
use crate::rules::decide::{Claim, PolicyRegistry, RegistryError};

#[derive(Serialize, Deserialize)]
struct Holder {
    activation_id: String,
    payment_id: String,
}

/// The policy registry in sled: insert-if-absent by compare-and-swap.
#[derive(Debug, Clone)]
pub struct SledPolicies(sled::Tree);

impl SledPolicies {
    pub(super) fn new(tree: sled::Tree) -> Self {
        Self(tree)
    }
}

impl PolicyRegistry for SledPolicies {
    fn claim(&mut self, policy_id: &str, activation_id: &str, payment_id: &str) -> Result<Claim, RegistryError> {
        let mine = to_json(&Holder {
            activation_id: activation_id.into(),
            payment_id: payment_id.into(),
        });
        let cas = self
            .0
            .compare_and_swap(policy_id.as_bytes(), None as Option<&[u8]>, Some(mine))
            .map_err(|e| RegistryError(e.to_string()))?;
        let current = match cas {
            Ok(()) => return Ok(Claim::Granted),
            Err(e) => e.current,
        };
        let holder: Holder = current
            .as_deref()
            .and_then(|v| serde_json::from_slice(v).ok())
            .ok_or_else(|| RegistryError(format!("unreadable holder of policy {policy_id}")))?;
        if holder.activation_id == activation_id {
            Ok(Claim::Granted)
        } else {
            Ok(Claim::HeldBy {
                payment_id: holder.payment_id,
                activation_id: holder.activation_id,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[test]
    fn policy_claims_are_exclusive_and_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let mut reg = Store::open(dir.path(), 1 << 20).unwrap().policies();
        assert_eq!(reg.claim("pol", "act1", "pay1").unwrap(), Claim::Granted);
        assert_eq!(reg.claim("pol", "act1", "pay1").unwrap(), Claim::Granted);
        assert_eq!(
            reg.claim("pol", "act2", "pay2").unwrap(),
            Claim::HeldBy {
                payment_id: "pay1".into(),
                activation_id: "act1".into()
            }
        );
    }
}
