//! `none`: selected when nothing else can serve the process. Unlike the original, it
//! never writes a snapshot that cannot be restarted: requests are refused.

use crate::codes::*;
use crate::error::{Error, Result};
use crate::framework::{CheckpointJob, CheckpointOutcome, Component, RestartOutcome, RestartPlan};
use crate::params::Params;

pub struct NoneComponent;

pub const NOT_CHECKPOINTABLE: &str =
    "not checkpointable: export self callbacks (opal_crs_self_user_checkpoint/_continue/_restart) or install CRIU >= 4";

impl Component for NoneComponent {
    fn name(&self) -> &'static str {
        "none"
    }

    fn priority(&self, params: &Params) -> i64 {
        params.int("crs_none_priority")
    }

    fn query(&self, _params: &Params) -> std::result::Result<(), String> {
        Ok(())
    }

    fn init(&self, params: &Params) -> Result<()> {
        if params.bool("crs_none_select_warning") && !params.bool("opal_cr_is_tool") {
            log::warn!(target: "crs", "crs: the 'none' component was selected: this process cannot be checkpointed (set crs_none_select_warning=0 to silence this)");
        }
        Ok(())
    }

    fn checkpoint(&self, _job: &mut CheckpointJob) -> Result<CheckpointOutcome> {
        Err(Error::new(OPAL_ERR_NOT_SUPPORTED, NOT_CHECKPOINTABLE))
    }

    fn restart(&self, plan: &RestartPlan, _spawn_child: bool) -> Result<RestartOutcome> {
        Err(Error::new(
            OPAL_ERR_NOT_SUPPORTED,
            format!(
                "snapshot {} was written by the 'none' component, which cannot restart anything",
                plan.dir.display()
            ),
        ))
    }
}
