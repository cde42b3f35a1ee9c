//! Fault injection: what a call should suffer instead of (or on top of) being served normally.
//!
//! A [`Fault`] is an optional delay followed by an [`Outcome`]: carry on normally, fail with a gRPC
//! status, hang until the call is cancelled, or exit the process. Faults are injected per
//! [`Method`] (or for every method) and kept in one ordered list, the [`FaultQueue`].
//!
//! # Precedence
//! Exactly one fault applies to a call, never more. When a call arrives, the queue is scanned in
//! insertion order and the *first* rule whose method matches (the call's method, or "any method")
//! and that has uses left is taken: its use count drops by one, and the rule is removed once
//! it reaches zero. So `UNAVAILABLE x2` followed by `DEADLINE_EXCEEDED x1` for the same method
//! yields UNAVAILABLE, UNAVAILABLE, DEADLINE_EXCEEDED, then normal service; and a rule for one
//! method injected after a catch-all rule only fires once the catch-all is used up. Rules with no
//! count ([`Fault::times`] not called, or `count` absent in JSON) never run out.
//!
//! A fault fires *before* the call is handled unless it is marked [`Fault::after_handling`]: then
//! the call is served first (state changes, e.g. a volume is created) and the fault replaces the
//! answer, which is how a driver that did the work but lost the reply looks to the caller.
//!
//! The JSON form used by the control API is [`FaultSpec`].

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tonic::Code;

use crate::method::Method;

/// What happens to a call once the fault's delay (if any) has passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Serve the call normally (useful with a delay: pure latency).
    Proceed,
    /// Fail the call with this gRPC status.
    Error {
        /// The gRPC status code.
        code: Code,
        /// The status message.
        message: String,
    },
    /// Never answer: the call stays pending until the client cancels it (deadline or drop) or
    /// the server shuts down (then it fails with UNAVAILABLE).
    Hang,
    /// Exit the process with this status code, through the driver's exit hook (see
    /// [`MockDriver::on_exit`](crate::MockDriver::on_exit)). Without a hook the call fails with
    /// UNAVAILABLE instead.
    Exit {
        /// Process exit status.
        code: i32,
    },
    /// Serve the call, then spoil its answer (see [`WrongAnswer`]): a driver that is wrong
    /// without saying so. Calls whose answer has nothing to spoil are served normally.
    Wrong(WrongAnswer),
}

/// How [`Outcome::Wrong`] spoils an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WrongAnswer {
    /// Half the size: a CreateVolume or ControllerExpandVolume answer with half the capacity
    /// asked for (and actually given), a snapshot with half its size.
    Smaller,
    /// No identifier: an empty `volume_id`, `snapshot_id` or `group_snapshot_id`.
    NoId,
}

/// A fault to inject into calls of one method: a delay, then an [`Outcome`], for a number of calls.
///
/// Build one with [`Fault::error`], [`Fault::delay`], [`Fault::hang`] or [`Fault::exit`], then
/// refine it with [`Fault::times`], [`Fault::with_delay`] and [`Fault::after_handling`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    /// Wait this long before the outcome.
    pub delay: Option<Duration>,
    /// What happens after the delay.
    pub outcome: Outcome,
    /// How many calls the fault applies to; `None` means every call until cleared.
    pub times: Option<u64>,
    /// Apply the fault after the call was handled (its effects are kept) instead of before.
    pub after: bool,
}

impl Fault {
    fn new(outcome: Outcome) -> Self {
        Self {
            delay: None,
            outcome,
            times: None,
            after: false,
        }
    }

    /// Fail calls with `code` and `message`.
    pub fn error(code: Code, message: impl Into<String>) -> Self {
        Self::new(Outcome::Error {
            code,
            message: message.into(),
        })
    }

    /// Add latency: wait `delay`, then serve the call normally.
    pub fn delay(delay: Duration) -> Self {
        Self::new(Outcome::Proceed).with_delay(delay)
    }

    /// Never answer, until the client gives up or the server shuts down.
    pub fn hang() -> Self {
        Self::new(Outcome::Hang)
    }

    /// Exit the process with `code` (through the driver's exit hook).
    pub fn exit(code: i32) -> Self {
        Self::new(Outcome::Exit { code })
    }

    /// Serve calls, then spoil their answers as `wrong` says.
    pub fn wrong(wrong: WrongAnswer) -> Self {
        Self::new(Outcome::Wrong(wrong))
    }

    /// Apply to the next `n` matching calls only (default: every call until cleared).
    #[must_use]
    pub fn times(mut self, n: u64) -> Self {
        self.times = Some(n);
        self
    }

    /// Apply to the next matching call only.
    #[must_use]
    pub fn once(self) -> Self {
        self.times(1)
    }

    /// Wait `delay` before the outcome.
    #[must_use]
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// Handle the call first, then apply the fault to the answer: the effects of the call stay.
    #[must_use]
    pub fn after_handling(mut self) -> Self {
        self.after = true;
        self
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            Outcome::Proceed => f.write_str("proceed")?,
            Outcome::Error { code, message } => write!(f, "{} {message:?}", code_name(*code))?,
            Outcome::Hang => f.write_str("hang")?,
            Outcome::Exit { code } => write!(f, "exit({code})")?,
            Outcome::Wrong(wrong) => write!(f, "wrong answer ({wrong:?})")?,
        }
        if let Some(delay) = self.delay {
            write!(f, " after {delay:?}")?;
        }
        if self.after {
            f.write_str(" (after handling)")?;
        }
        match self.times {
            Some(n) => write!(f, " x{n}"),
            None => f.write_str(" until cleared"),
        }
    }
}

/// One entry of the [`FaultQueue`]: a fault and the method it applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultRule {
    /// The method the rule applies to; `None` means every method.
    pub method: Option<Method>,
    /// The fault, with its remaining use count.
    pub fault: Fault,
}

/// The ordered list of fault rules; see the module documentation for precedence.
#[derive(Clone, Debug, Default)]
pub struct FaultQueue {
    rules: Vec<FaultRule>,
}

impl FaultQueue {
    /// Appends a rule. A rule with zero uses is dropped at once.
    pub fn push(&mut self, method: Option<Method>, fault: Fault) {
        if fault.times != Some(0) {
            self.rules.push(FaultRule { method, fault });
        }
    }

    /// Removes every rule.
    pub fn clear(&mut self) {
        self.rules.clear();
    }

    /// The rules in precedence order, with their remaining counts.
    pub fn rules(&self) -> &[FaultRule] {
        &self.rules
    }

    /// Takes one use of the first rule matching `method`, removing the rule when used up.
    pub fn take(&mut self, method: Method) -> Option<Fault> {
        let index = self
            .rules
            .iter()
            .position(|r| r.method.is_none_or(|m| m == method))?;
        let rule = &mut self.rules[index];
        let fault = rule.fault.clone();
        match &mut rule.fault.times {
            Some(n) if *n <= 1 => {
                self.rules.remove(index);
            }
            Some(n) => *n -= 1,
            None => {}
        }
        Some(fault)
    }
}

/// The JSON form of a fault, as `POST /faults` takes it and `GET /faults` lists it.
///
/// ```json
/// {"method": "CreateVolume", "code": "UNAVAILABLE", "message": "try later", "count": 2}
/// {"method": "ListVolumes", "delay_ms": 1500}
/// {"method": "ControllerPublishVolume", "hang": true, "count": 1}
/// {"method": "CreateVolume", "exit": true, "exit_code": 137, "after": true, "count": 1}
/// {"method": "CreateVolume", "wrong": "no_id", "count": 1}
/// ```
///
/// - `method`: a gRPC method name (`CreateVolume`, case-insensitive); absent or `"*"` for every
///   method.
/// - `code`: a gRPC code, by name (`"UNAVAILABLE"`, `"Unavailable"`) or number (`14`).
/// - `message`: the status message (default `"injected fault"`).
/// - `count`: how many calls the fault applies to; absent means until `DELETE /faults`.
/// - `delay_ms`: wait this long first (alone: pure latency).
/// - `hang`: never answer, until the client cancels.
/// - `exit`: exit the process (status `exit_code`, default 1).
/// - `after`: handle the call first, then apply the fault (the call's effects are kept).
/// - `wrong`: serve the call, then spoil its answer: `"smaller"` or `"no_id"` ([`WrongAnswer`]).
///
/// At most one of `code`, `hang`, `exit` and `wrong` may be given; at least one of them or
/// `delay_ms`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// Method name, `"*"` or absent for every method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// gRPC code by name or number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<CodeSpec>,
    /// Status message for `code`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Number of calls; absent means unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Delay before the outcome, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// Hang until cancelled.
    #[serde(default, skip_serializing_if = "is_false")]
    pub hang: bool,
    /// Exit the process.
    #[serde(default, skip_serializing_if = "is_false")]
    pub exit: bool,
    /// Exit status for `exit` (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Apply after the call was handled.
    #[serde(default, skip_serializing_if = "is_false")]
    pub after: bool,
    /// Spoil the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wrong: Option<WrongAnswer>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A gRPC code in JSON: its name or its number.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CodeSpec {
    /// A number, e.g. `14`.
    Number(i32),
    /// A name, e.g. `"UNAVAILABLE"` or `"Unavailable"` or `"unavailable"`.
    Name(String),
}

impl CodeSpec {
    /// The code, if the name or number is a valid gRPC code.
    pub fn to_code(&self) -> Option<Code> {
        match self {
            CodeSpec::Number(n) => CODE_NAMES
                .iter()
                .find(|(c, _)| *c as i32 == *n)
                .map(|(c, _)| *c),
            CodeSpec::Name(name) => {
                let wanted: String = name
                    .chars()
                    .filter(|c| *c != '_')
                    .map(|c| c.to_ascii_uppercase())
                    .collect();
                CODE_NAMES
                    .iter()
                    .find(|(_, n)| n.replace('_', "") == wanted)
                    .map(|(c, _)| *c)
            }
        }
    }
}

/// Why a [`FaultSpec`] cannot be turned into a fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultSpecError {
    /// The method name is not a CSI method.
    #[error(transparent)]
    UnknownMethod(#[from] crate::method::UnknownMethod),
    /// The code is not a gRPC code, or is OK.
    #[error("invalid gRPC code {0:?}: use a name such as \"UNAVAILABLE\" or a number 1-16")]
    InvalidCode(CodeSpec),
    /// More than one of `code`, `hang`, `exit` and `wrong`.
    #[error("give at most one of code, hang, exit and wrong")]
    Conflicting,
    /// None of `code`, `hang`, `exit`, `wrong` and `delay_ms`.
    #[error("the fault does nothing: give code, hang, exit, wrong or delay_ms")]
    Empty,
    /// `count` is zero.
    #[error("count must be at least 1 (leave it out for unlimited)")]
    ZeroCount,
}

/// The message of an injected error when none is given.
pub const DEFAULT_FAULT_MESSAGE: &str = "injected fault";

impl FaultSpec {
    /// Validates the spec and splits it into the method (`None`: every method) and the fault.
    pub fn to_rule(&self) -> Result<(Option<Method>, Fault), FaultSpecError> {
        let method = match self.method.as_deref().map(str::trim) {
            None | Some("" | "*") => None,
            Some(name) => Some(name.parse::<Method>()?),
        };
        let chosen = usize::from(self.code.is_some())
            + usize::from(self.hang)
            + usize::from(self.exit)
            + usize::from(self.wrong.is_some());
        if chosen > 1 {
            return Err(FaultSpecError::Conflicting);
        }
        let outcome = if let Some(spec) = &self.code {
            let code = spec
                .to_code()
                .filter(|c| *c != Code::Ok)
                .ok_or_else(|| FaultSpecError::InvalidCode(spec.clone()))?;
            Outcome::Error {
                code,
                message: self
                    .message
                    .clone()
                    .unwrap_or_else(|| DEFAULT_FAULT_MESSAGE.to_owned()),
            }
        } else if self.hang {
            Outcome::Hang
        } else if self.exit {
            Outcome::Exit {
                code: self.exit_code.unwrap_or(1),
            }
        } else if let Some(wrong) = self.wrong {
            Outcome::Wrong(wrong)
        } else if self.delay_ms.is_some() {
            Outcome::Proceed
        } else {
            return Err(FaultSpecError::Empty);
        };
        if self.count == Some(0) {
            return Err(FaultSpecError::ZeroCount);
        }
        Ok((
            method,
            Fault {
                delay: self.delay_ms.map(Duration::from_millis),
                outcome,
                times: self.count,
                after: self.after,
            },
        ))
    }

    /// The JSON form of a queued rule (with its remaining count).
    pub fn from_rule(rule: &FaultRule) -> Self {
        let fault = &rule.fault;
        let mut spec = FaultSpec {
            method: Some(rule.method.map_or("*", Method::as_str).to_owned()),
            count: fault.times,
            delay_ms: fault
                .delay
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            after: fault.after,
            ..FaultSpec::default()
        };
        match &fault.outcome {
            Outcome::Proceed => {}
            Outcome::Error { code, message } => {
                spec.code = Some(CodeSpec::Name(code_name(*code).to_owned()));
                spec.message = Some(message.clone());
            }
            Outcome::Hang => spec.hang = true,
            Outcome::Exit { code } => {
                spec.exit = true;
                spec.exit_code = Some(*code);
            }
            Outcome::Wrong(wrong) => spec.wrong = Some(*wrong),
        }
        spec
    }
}

/// Every gRPC code with its canonical upper-case name.
const CODE_NAMES: &[(Code, &str)] = &[
    (Code::Ok, "OK"),
    (Code::Cancelled, "CANCELLED"),
    (Code::Unknown, "UNKNOWN"),
    (Code::InvalidArgument, "INVALID_ARGUMENT"),
    (Code::DeadlineExceeded, "DEADLINE_EXCEEDED"),
    (Code::NotFound, "NOT_FOUND"),
    (Code::AlreadyExists, "ALREADY_EXISTS"),
    (Code::PermissionDenied, "PERMISSION_DENIED"),
    (Code::ResourceExhausted, "RESOURCE_EXHAUSTED"),
    (Code::FailedPrecondition, "FAILED_PRECONDITION"),
    (Code::Aborted, "ABORTED"),
    (Code::OutOfRange, "OUT_OF_RANGE"),
    (Code::Unimplemented, "UNIMPLEMENTED"),
    (Code::Internal, "INTERNAL"),
    (Code::Unavailable, "UNAVAILABLE"),
    (Code::DataLoss, "DATA_LOSS"),
    (Code::Unauthenticated, "UNAUTHENTICATED"),
];

/// The canonical upper-case name of a gRPC code, e.g. `UNAVAILABLE`.
pub fn code_name(code: Code) -> &'static str {
    CODE_NAMES
        .iter()
        .find(|(c, _)| *c == code)
        .map_or("UNKNOWN", |(_, n)| n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unavailable() -> Fault {
        Fault::error(Code::Unavailable, "down")
    }

    #[test]
    fn counted_rule_is_used_up_then_removed() {
        let mut q = FaultQueue::default();
        q.push(Some(Method::CreateVolume), unavailable().times(2));
        assert!(q.take(Method::DeleteVolume).is_none());
        assert_eq!(
            q.take(Method::CreateVolume).unwrap().outcome,
            unavailable().outcome
        );
        assert_eq!(q.rules()[0].fault.times, Some(1));
        assert!(q.take(Method::CreateVolume).is_some());
        assert!(q.take(Method::CreateVolume).is_none());
        assert!(q.rules().is_empty());
    }

    #[test]
    fn first_matching_rule_wins_in_insertion_order() {
        let mut q = FaultQueue::default();
        q.push(None, Fault::delay(Duration::from_millis(5)).once());
        q.push(Some(Method::CreateVolume), unavailable().once());
        q.push(Some(Method::CreateVolume), Fault::hang());
        // The catch-all comes first and is taken by any method.
        assert_eq!(
            q.take(Method::CreateVolume).unwrap().outcome,
            Outcome::Proceed
        );
        assert_eq!(
            q.take(Method::CreateVolume).unwrap().outcome,
            unavailable().outcome
        );
        // Unlimited rules never run out.
        for _ in 0..3 {
            assert_eq!(q.take(Method::CreateVolume).unwrap().outcome, Outcome::Hang);
        }
        assert!(q.take(Method::Probe).is_none());
        q.clear();
        assert!(q.take(Method::CreateVolume).is_none());
    }

    #[test]
    fn zero_count_rule_is_dropped() {
        let mut q = FaultQueue::default();
        q.push(None, unavailable().times(0));
        assert!(q.rules().is_empty());
    }

    #[test]
    fn spec_parses_all_forms() {
        let spec: FaultSpec = serde_json::from_str(
            r#"{"method":"CreateVolume","code":"UNAVAILABLE","message":"m","count":2}"#,
        )
        .unwrap();
        let (method, fault) = spec.to_rule().unwrap();
        assert_eq!(method, Some(Method::CreateVolume));
        assert_eq!(fault, Fault::error(Code::Unavailable, "m").times(2));

        let spec: FaultSpec = serde_json::from_str(r#"{"code":14}"#).unwrap();
        let (method, fault) = spec.to_rule().unwrap();
        assert_eq!(method, None);
        assert_eq!(
            fault,
            Fault::error(Code::Unavailable, DEFAULT_FAULT_MESSAGE)
        );

        let spec: FaultSpec =
            serde_json::from_str(r#"{"method":"*","code":"deadline_exceeded","delay_ms":10}"#)
                .unwrap();
        let (_, fault) = spec.to_rule().unwrap();
        assert_eq!(
            fault,
            Fault::error(Code::DeadlineExceeded, DEFAULT_FAULT_MESSAGE)
                .with_delay(Duration::from_millis(10))
        );

        let spec: FaultSpec = serde_json::from_str(r#"{"delay_ms":10}"#).unwrap();
        assert_eq!(
            spec.to_rule().unwrap().1,
            Fault::delay(Duration::from_millis(10))
        );

        let spec: FaultSpec =
            serde_json::from_str(r#"{"method":"Probe","exit":true,"after":true}"#).unwrap();
        assert_eq!(spec.to_rule().unwrap().1, Fault::exit(1).after_handling());

        let spec: FaultSpec = serde_json::from_str(r#"{"hang":true,"count":1}"#).unwrap();
        assert_eq!(spec.to_rule().unwrap().1, Fault::hang().once());
    }

    #[test]
    fn spec_rejects_nonsense() {
        let cases = [
            (r#"{"method":"Nope","code":14}"#, "unknown CSI method"),
            (r#"{"code":"NOPE"}"#, "invalid gRPC code"),
            (r#"{"code":0}"#, "invalid gRPC code"),
            (r#"{"code":17}"#, "invalid gRPC code"),
            (r#"{"code":14,"hang":true}"#, "at most one"),
            (r#"{"method":"Probe"}"#, "does nothing"),
            (r#"{"code":14,"count":0}"#, "at least 1"),
        ];
        for (json, want) in cases {
            let spec: FaultSpec = serde_json::from_str(json).unwrap();
            let err = spec.to_rule().unwrap_err().to_string();
            assert!(err.contains(want), "{json}: {err}");
        }
        assert!(serde_json::from_str::<FaultSpec>(r#"{"cod":14}"#).is_err());
    }

    #[test]
    fn spec_round_trips_through_a_rule() {
        let rule = FaultRule {
            method: Some(Method::ListVolumes),
            fault: Fault::error(Code::Aborted, "busy")
                .with_delay(Duration::from_millis(3))
                .times(4)
                .after_handling(),
        };
        let spec = FaultSpec::from_rule(&rule);
        assert_eq!(spec.code, Some(CodeSpec::Name("ABORTED".into())));
        let (method, fault) = spec.to_rule().unwrap();
        assert_eq!(FaultRule { method, fault }, rule);
    }

    #[test]
    fn display_is_readable() {
        let f = Fault::error(Code::Unavailable, "x").times(2);
        assert_eq!(f.to_string(), r#"UNAVAILABLE "x" x2"#);
        assert_eq!(
            Fault::hang()
                .with_delay(Duration::from_millis(1))
                .to_string(),
            "hang after 1ms until cleared"
        );
    }
}
