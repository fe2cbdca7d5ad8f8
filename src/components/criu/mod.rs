//! placeholder until the CRIU client lands
