//! The safeguards a license mandates, ready for the engine: the watermark (its key
//! unwrapped with this node's key) and the compiled output filter.
//!
//! They come only from the verified license. No flag, environment variable or config
//! key reaches this module: an operator cannot turn a mandated safeguard off.

use crate::crypto::key_wrap;
use crate::license::LicenseBody;
use crate::node::NodeIdentity;
use crate::runtime::output_filter::OutputFilter;
use crate::watermark::{Params, WatermarkKey};

/// A watermark to apply: the key and the license's parameters.
pub struct Watermark {
    pub key: WatermarkKey,
    pub params: Params,
}

/// What the engine applies to every generation.
#[derive(Default)]
pub struct Safeguards {
    pub watermark: Option<Watermark>,
    pub filter: Option<OutputFilter>,
}

impl Safeguards {
    /// None: for engines driven without a license (benchmarks, tests of the engine).
    pub fn none() -> Safeguards {
        Safeguards::default()
    }

    /// The safeguards `body` mandates, for this node. `body` comes from a verified
    /// license: verification already refused parameters or rules a node cannot apply.
    pub fn from_license(body: &LicenseBody, identity: &NodeIdentity) -> Result<Safeguards, String> {
        let watermark = match &body.watermark {
            None => None,
            Some(mandate) => {
                let key = key_wrap::unwrap_secret(
                    identity.unwrapper(),
                    &body.watermark_binding_info(),
                    &mandate.key.to_wrapped(),
                )
                .map_err(|e| format!("cannot unwrap the watermark key: {e}"))?;
                Some(Watermark {
                    key: WatermarkKey::from_bytes(*key),
                    params: mandate.params,
                })
            }
        };
        let filter = match &body.output_filter {
            None => None,
            Some(rules) => Some(OutputFilter::new(rules)?),
        };
        Ok(Safeguards { watermark, filter })
    }

    /// How many previous tokens seed the watermark's green lists (0 without one).
    pub fn watermark_context(&self) -> usize {
        self.watermark.as_ref().map_or(0, |w| w.params.context())
    }
}
