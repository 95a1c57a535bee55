//! Workflow definitions: a named, versioned DAG of steps, written in YAML or built in Rust.
//!
//! ```
//! use lineq_orchestrator::workflow::{StepDefinition, WorkflowDefinition};
//! let wf = WorkflowDefinition::new("order")
//!     .step(StepDefinition::new("charge", "payments.charge").max_attempts(3))
//!     .step(StepDefinition::new("ship", "warehouse.ship").depends_on(["charge"]));
//! wf.validate().unwrap();
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use lineq_core::validation::{Namespace, ValidationError, check_name};

use crate::flow::{ConcurrencyLimit, RateLimit};

/// Most steps in one workflow.
pub const MAX_STEPS: usize = 1000;
/// Most attempts a step may be given.
pub const MAX_ATTEMPTS: u32 = 100;

/// A workflow: steps and the order they depend on each other.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowDefinition {
    /// Its name, used by `lineq submit NAME`.
    pub name: String,
    /// Its version; registration assigns the next one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i32>,
    /// What it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The namespace steps run in unless they name one (default `default`).
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// The steps.
    pub steps: Vec<StepDefinition>,
}

fn default_namespace() -> String {
    Namespace::default_namespace().to_string()
}

/// One step of a workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepDefinition {
    /// Unique within the workflow.
    pub name: String,
    /// The handler that runs it.
    pub handler: String,
    /// The namespace whose workers run it (default: the workflow's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Steps that must be done before it starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// How failed attempts are retried.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Time limit for each attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// What a failure (after all retries) does to the execution.
    #[serde(default)]
    pub on_failure: OnFailure,
    /// Fixed parameters, passed to the handler as `params`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Value>,
    /// At most this many steps with its key run at once (docs/flow-control.md); overrides
    /// the submit's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<ConcurrencyLimit>,
    /// At most this many steps with its key start per second or minute; overrides the
    /// submit's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Its priority (default: the execution's): higher is claimed first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
}

/// How a failed attempt is retried: exponential backoff with jitter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 = no retry).
    pub max_attempts: u32,
    /// Delay before the second attempt.
    pub backoff_ms: u64,
    /// Each further delay is multiplied by this.
    pub multiplier: f64,
    /// No delay is longer than this.
    pub max_backoff_ms: u64,
    /// Spread delays randomly over [delay/2, delay] so retries do not arrive in lockstep.
    pub jitter: bool,
    /// Error kinds that may be retried; empty means every error the handler marks retryable.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub retry_on: Vec<String>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 1,
            backoff_ms: 1000,
            multiplier: 2.0,
            max_backoff_ms: 60_000,
            jitter: true,
            retry_on: Vec::new(),
        }
    }
}

impl RetryPolicy {
    /// The delay before the attempt after `failed_attempt` (1-based).
    pub fn delay_after(&self, failed_attempt: i32) -> Duration {
        let exp = failed_attempt.saturating_sub(1).clamp(0, 60);
        let raw = self.backoff_ms as f64 * self.multiplier.powi(exp);
        let capped = raw.min(self.max_backoff_ms as f64).max(0.0);
        let ms = if self.jitter {
            // Random bits of a UUIDv7: good enough to spread retries, no RNG dependency.
            let r = (uuid::Uuid::now_v7().as_u128() & 0xffff) as f64 / 65535.0;
            capped / 2.0 + r * capped / 2.0
        } else {
            capped
        };
        Duration::from_millis(ms as u64)
    }

    /// Whether an error of `kind`, marked `retryable`, may be retried under this policy.
    pub fn allows(&self, kind: &str, retryable: bool) -> bool {
        if self.retry_on.is_empty() {
            retryable
        } else {
            self.retry_on.iter().any(|k| k == kind)
        }
    }
}

/// What a step's final failure does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Fail the execution (default).
    #[default]
    Fail,
    /// Record the failure and go on: dependents run, the execution can still complete.
    Continue,
}

impl StepDefinition {
    /// A step `name` running `handler`, with defaults.
    pub fn new(name: impl Into<String>, handler: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            handler: handler.into(),
            namespace: None,
            depends_on: Vec::new(),
            retry: RetryPolicy::default(),
            timeout_ms: None,
            on_failure: OnFailure::Fail,
            params: None,
            concurrency: None,
            rate_limit: None,
            priority: None,
        }
    }

    /// Limits how many steps with the limit's key run at once.
    pub fn concurrency(mut self, limit: ConcurrencyLimit) -> Self {
        self.concurrency = Some(limit);
        self
    }

    /// Limits how many steps with the limit's key start per second or minute.
    pub fn rate_limit(mut self, limit: RateLimit) -> Self {
        self.rate_limit = Some(limit);
        self
    }

    /// Sets its priority.
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Sets the dependencies.
    pub fn depends_on<I, S>(mut self, deps: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.depends_on = deps.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the namespace.
    pub fn namespace(mut self, ns: impl Into<String>) -> Self {
        self.namespace = Some(ns.into());
        self
    }

    /// Sets the attempts allowed.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.retry.max_attempts = n;
        self
    }

    /// Sets the retry policy.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Sets the per-attempt timeout.
    pub fn timeout_ms(mut self, ms: u64) -> Self {
        self.timeout_ms = Some(ms);
        self
    }

    /// Sets what a final failure does.
    pub fn on_failure(mut self, f: OnFailure) -> Self {
        self.on_failure = f;
        self
    }

    /// Sets fixed parameters.
    pub fn params(mut self, params: Value) -> Self {
        self.params = Some(params);
        self
    }
}

impl WorkflowDefinition {
    /// An empty workflow called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            version: None,
            description: None,
            namespace: default_namespace(),
            steps: Vec::new(),
        }
    }

    /// The one-step workflow a bare handler name runs as.
    pub fn single_step(handler: &str, namespace: &str, timeout_ms: Option<u64>) -> Self {
        let mut step = StepDefinition::new(handler, handler);
        step.timeout_ms = timeout_ms;
        Self {
            name: handler.to_string(),
            version: Some(1),
            description: None,
            namespace: namespace.to_string(),
            steps: vec![step],
        }
    }

    /// Adds a step.
    pub fn step(mut self, step: StepDefinition) -> Self {
        self.steps.push(step);
        self
    }

    /// Parses YAML (and checks it).
    pub fn from_yaml(text: &str) -> Result<Self, ValidationError> {
        let wf: Self = serde_yaml_ng::from_str(text).map_err(|e| {
            let e = e.to_string();
            ValidationError::new(
                "workflow",
                format!("not a valid workflow: {}{e}", yaml_step_hint(text, &e)),
            )
        })?;
        wf.validate()?;
        Ok(wf)
    }

    /// The definition as YAML, in the form [`WorkflowDefinition::from_yaml`] reads back.
    pub fn to_yaml(&self) -> Result<String, serde_yaml_ng::Error> {
        serde_yaml_ng::to_string(self)
    }

    /// The namespace a step runs in.
    pub fn step_namespace<'a>(&'a self, step: &'a StepDefinition) -> &'a str {
        step.namespace.as_deref().unwrap_or(&self.namespace)
    }

    /// Checks names, handlers, namespaces, dependencies (known, not itself, no cycles) and
    /// retry settings; the error names the step.
    #[expect(
        clippy::too_many_lines,
        reason = "every rule of a definition, each with the error that names the field"
    )]
    pub fn validate(&self) -> Result<(), ValidationError> {
        check_name("workflow name", &self.name)?;
        if let Some(v) = self.version {
            if v < 1 {
                return Err(ValidationError::new(
                    "version",
                    format!("must be at least 1, got {v}"),
                ));
            }
        }
        Namespace::new(&self.namespace)?;
        if self.steps.is_empty() {
            return Err(ValidationError::new(
                "steps",
                "a workflow needs at least one step",
            ));
        }
        if self.steps.len() > MAX_STEPS {
            return Err(ValidationError::new(
                "steps",
                format!("{} steps; the limit is {MAX_STEPS}", self.steps.len()),
            ));
        }
        let mut names = HashSet::new();
        for s in &self.steps {
            let at =
                |why: String| ValidationError::new("steps", format!("step {:?}: {why}", s.name));
            check_name("step name", &s.name).map_err(|e| at(e.reason))?;
            if !names.insert(s.name.as_str()) {
                return Err(at("the name is used by more than one step".into()));
            }
            if s.handler.trim().is_empty() {
                return Err(at("the handler is empty".into()));
            }
            check_name("handler", &s.handler).map_err(|e| at(e.reason))?;
            if let Some(ns) = &s.namespace {
                Namespace::new(ns).map_err(|e| at(e.reason))?;
            }
            if s.retry.max_attempts < 1 || s.retry.max_attempts > MAX_ATTEMPTS {
                return Err(at(format!(
                    "retry.max_attempts is {}; it must be 1 to {MAX_ATTEMPTS}",
                    s.retry.max_attempts
                )));
            }
            if !(s.retry.multiplier.is_finite() && s.retry.multiplier >= 1.0) {
                return Err(at("retry.multiplier must be at least 1".into()));
            }
            if s.timeout_ms == Some(0) {
                return Err(at("timeout_ms must be at least 1".into()));
            }
            if let Some(c) = &s.concurrency {
                if c.limit == 0 || c.limit > 100_000 {
                    return Err(at(format!(
                        "concurrency.limit is {}; it must be 1 to 100000",
                        c.limit
                    )));
                }
                if c.key.is_empty() || c.key.chars().count() > 200 {
                    return Err(at("concurrency.key must be 1 to 200 characters".into()));
                }
            }
            if let Some(r) = &s.rate_limit {
                if r.limit == 0 || r.limit > 1_000_000 {
                    return Err(at(format!(
                        "rate_limit.limit is {}; it must be 1 to 1000000",
                        r.limit
                    )));
                }
                if r.key.is_empty() || r.key.chars().count() > 200 {
                    return Err(at("rate_limit.key must be 1 to 200 characters".into()));
                }
            }
        }
        for s in &self.steps {
            let mut seen = HashSet::new();
            for d in &s.depends_on {
                if d == &s.name {
                    return Err(ValidationError::new(
                        "steps",
                        format!("step {:?} depends on itself", s.name),
                    ));
                }
                if !names.contains(d.as_str()) {
                    return Err(ValidationError::new(
                        "steps",
                        format!("step {:?} depends on unknown step {d:?}", s.name),
                    ));
                }
                if !seen.insert(d) {
                    return Err(ValidationError::new(
                        "steps",
                        format!("step {:?} lists {d:?} twice in depends_on", s.name),
                    ));
                }
            }
        }
        if let Some(cycle) = self.find_cycle() {
            return Err(ValidationError::new(
                "steps",
                format!("steps form a cycle: {}", cycle.join(" → ")),
            ));
        }
        Ok(())
    }

    /// A dependency cycle, as step names (first repeated last), if there is one.
    fn find_cycle(&self) -> Option<Vec<String>> {
        let deps: HashMap<&str, &Vec<String>> = self
            .steps
            .iter()
            .map(|s| (s.name.as_str(), &s.depends_on))
            .collect();
        // 0 = unvisited, 1 = on the current path, 2 = done
        let mut state: BTreeMap<&str, u8> = BTreeMap::new();
        fn visit<'a>(
            n: &'a str,
            deps: &HashMap<&'a str, &'a Vec<String>>,
            state: &mut BTreeMap<&'a str, u8>,
            path: &mut Vec<&'a str>,
        ) -> Option<Vec<String>> {
            match state.get(n) {
                Some(2) => return None,
                Some(1) => {
                    let start = path.iter().position(|p| *p == n).unwrap_or(0);
                    let mut c: Vec<String> = path[start..].iter().map(|s| s.to_string()).collect();
                    c.push(n.to_string());
                    return Some(c);
                }
                _ => {}
            }
            state.insert(n, 1);
            path.push(n);
            for d in deps.get(n).map(|v| v.as_slice()).unwrap_or(&[]) {
                if let Some(c) = visit(d, deps, state, path) {
                    return Some(c);
                }
            }
            path.pop();
            state.insert(n, 2);
            None
        }
        for s in &self.steps {
            let mut path = Vec::new();
            if let Some(c) = visit(&s.name, &deps, &mut state, &mut path) {
                return Some(c);
            }
        }
        None
    }
}

/// `step "NAME": ` when a YAML error is inside `steps[N]` and that step has a name, so the error
/// names the step as `validate`'s errors do (serde only knows the index).
fn yaml_step_hint(text: &str, error: &str) -> String {
    let Some(index) = error
        .strip_prefix("steps[")
        .and_then(|rest| rest.split_once(']'))
        .and_then(|(n, _)| n.parse::<usize>().ok())
    else {
        return String::new();
    };
    serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text)
        .ok()
        .and_then(|doc| {
            doc.get("steps")?
                .get(index)?
                .get("name")?
                .as_str()
                .map(|n| format!("step {n:?}: "))
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(wf: &WorkflowDefinition) -> String {
        wf.validate().unwrap_err().to_string()
    }

    #[test]
    fn rejects_bad_graphs_naming_the_step() {
        let wf = WorkflowDefinition::new("w")
            .step(StepDefinition::new("a", "echo").depends_on(["c"]))
            .step(StepDefinition::new("b", "echo").depends_on(["a"]))
            .step(StepDefinition::new("c", "echo").depends_on(["b"]));
        let e = err(&wf);
        assert!(e.contains("cycle") && e.contains("a → c → b → a"), "{e}");

        let wf =
            WorkflowDefinition::new("w").step(StepDefinition::new("a", "echo").depends_on(["zz"]));
        assert!(err(&wf).contains(r#"step "a" depends on unknown step "zz""#));
        let wf = WorkflowDefinition::new("w")
            .step(StepDefinition::new("a", "echo"))
            .step(StepDefinition::new("a", "echo"));
        assert!(err(&wf).contains(r#"step "a": the name is used by more than one step"#));
        let wf = WorkflowDefinition::new("w").step(StepDefinition::new("a", " "));
        assert!(err(&wf).contains(r#"step "a": the handler is empty"#));
        let wf =
            WorkflowDefinition::new("w").step(StepDefinition::new("a", "echo").depends_on(["a"]));
        assert!(err(&wf).contains("depends on itself"));
        let wf =
            WorkflowDefinition::new("w").step(StepDefinition::new("a", "echo").max_attempts(0));
        assert!(err(&wf).contains("max_attempts"));
        assert!(err(&WorkflowDefinition::new("w")).contains("at least one step"));
    }

    #[test]
    fn parses_yaml() {
        let wf = WorkflowDefinition::from_yaml(
            r#"
name: diamond
version: 2
steps:
  - name: a
    handler: echo
  - name: b
    handler: echo
    depends_on: [a]
    retry: { max_attempts: 3, backoff_ms: 10 }
  - name: c
    handler: echo
    depends_on: [a]
    on_failure: continue
  - name: d
    handler: echo
    depends_on: [b, c]
    timeout_ms: 500
"#,
        )
        .unwrap();
        assert_eq!(wf.version, Some(2));
        assert_eq!(wf.steps[1].retry.max_attempts, 3);
        assert_eq!(wf.steps[2].on_failure, OnFailure::Continue);
        let e = WorkflowDefinition::from_yaml("name: x\nsteps: []\nbogus: 1").unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let e = WorkflowDefinition::from_yaml(
            "name: x\nsteps:\n  - name: a\n    handler: echo\n  - name: b\n    handler: echo\n    retry: { bogus: 1 }\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains(r#"step "b": steps[1].retry: unknown field `bogus`"#),
            "{e}"
        );
        let back = WorkflowDefinition::from_yaml(&wf.to_yaml().unwrap()).unwrap();
        assert_eq!(back, wf);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            backoff_ms: 100,
            max_backoff_ms: 1000,
            jitter: false,
            ..Default::default()
        };
        assert_eq!(p.delay_after(1), Duration::from_millis(100));
        assert_eq!(p.delay_after(2), Duration::from_millis(200));
        assert_eq!(p.delay_after(10), Duration::from_millis(1000));
        let j = RetryPolicy {
            backoff_ms: 1000,
            jitter: true,
            ..Default::default()
        };
        for _ in 0..50 {
            let d = j.delay_after(1).as_millis();
            assert!((500..=1000).contains(&d), "{d}");
        }
    }
}
