//! What the orchestrators do beside processing results: release the steps of workers that went
//! silent ([`sweeper`]) and remove finished history past its retention ([`prune`]).

pub mod prune;
pub mod sweeper;
