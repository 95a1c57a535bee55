//! The flags of the HTTP listeners' limits, shared by `lineq serve` (the REST API) and the
//! metrics endpoint of `lineq orchestrator` and `lineq worker`.

use clap::Args;

use lineq::config::HttpSection;
use lineq_api::http::HttpLimits;
use lineq_core::validation::ValidationError;

/// Limits that hold on every connection before any authentication.
#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// HTTP listener (the REST API, or --metrics-addr): seconds a client gets to send a request's headers; a kept-alive connection that
    /// starts no new request is closed after it too.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub http_header_timeout_secs: u64,
    /// HTTP listener: seconds from a request's headers to its response, reading the body included; a
    /// slower request gets 408.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub http_request_timeout_secs: u64,
    /// HTTP listener: seconds a connection may go with no bytes moving while none of its requests is
    /// being handled (e.g. a client that stops reading a response).
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub http_idle_timeout_secs: u64,
    /// HTTP listener: connections open at once; one more gets 503 and is closed.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub http_max_connections: usize,
}

impl HttpArgs {
    /// The flags given on the command line (`given`) over `section`, then both updated to the
    /// effective values.
    pub fn resolve(&mut self, section: &mut HttpSection, given: impl Fn(&str) -> bool) {
        if given("http_header_timeout_secs") {
            section.header_timeout_secs = self.http_header_timeout_secs;
        }
        if given("http_request_timeout_secs") {
            section.request_timeout_secs = self.http_request_timeout_secs;
        }
        if given("http_idle_timeout_secs") {
            section.idle_timeout_secs = self.http_idle_timeout_secs;
        }
        if given("http_max_connections") {
            section.max_connections = self.http_max_connections;
        }
        self.http_header_timeout_secs = section.header_timeout_secs;
        self.http_request_timeout_secs = section.request_timeout_secs;
        self.http_idle_timeout_secs = section.idle_timeout_secs;
        self.http_max_connections = section.max_connections;
    }

    /// The limits, checked.
    pub fn limits(&self) -> Result<HttpLimits, ValidationError> {
        HttpLimits::from_secs(
            self.http_header_timeout_secs,
            self.http_request_timeout_secs,
            self.http_idle_timeout_secs,
            self.http_max_connections,
        )
    }
}
