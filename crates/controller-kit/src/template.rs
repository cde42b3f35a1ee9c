//! Go's `os.Expand` templates and Kubernetes name checks, as the sidecars use them for secret
//! references in class parameters (`${pvc.name}`, `${volumesnapshot.namespace}`, …): one
//! implementation for every controller, with Go's quirks (`$name` without braces is a token,
//! `${}` is eaten) and upstream's error texts.

use std::collections::{BTreeMap, BTreeSet};

/// Upstream `resolveTemplate`: Go `os.Expand` with `params`; unknown tokens are an error listing
/// them sorted, as `invalid tokens: ["a" "b"]`.
pub fn resolve_template(
    template: &str,
    params: &BTreeMap<String, String>,
) -> Result<String, String> {
    let mut missing = BTreeSet::new();
    let resolved = os_expand(template, |k| match params.get(k) {
        Some(v) => v.clone(),
        None => {
            missing.insert(k.to_string());
            String::new()
        }
    });
    if missing.is_empty() {
        Ok(resolved)
    } else {
        let list: Vec<String> = missing.iter().map(|m| go_quote(m)).collect();
        Err(format!("invalid tokens: [{}]", list.join(" ")))
    }
}

/// Go's `os.Expand`: `${name}` and `$name` are replaced by `mapping(name)`.
pub fn os_expand(s: &str, mut mapping: impl FnMut(&str) -> String) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0; // start of the text not yet copied
    let mut j = 0;
    let mut expanded = false;
    while j < b.len() {
        if b[j] == b'$' && j + 1 < b.len() {
            expanded = true;
            out.push_str(&s[i..j]);
            let (name, w) = shell_name(&s[j + 1..]);
            if name.is_empty() && w > 0 {
                // Invalid syntax: the characters are eaten.
            } else if name.is_empty() {
                out.push('$');
            } else {
                out.push_str(&mapping(name));
            }
            j += w;
            i = j + 1;
        }
        j += 1;
    }
    if !expanded {
        return s.to_string();
    }
    out.push_str(&s[i.min(s.len())..]);
    out
}

fn is_shell_special(c: u8) -> bool {
    matches!(
        c,
        b'*' | b'#' | b'$' | b'@' | b'!' | b'?' | b'-' | b'0'..=b'9'
    )
}

fn is_alnum(c: u8) -> bool {
    c == b'_' || c.is_ascii_alphanumeric()
}

/// Go's `getShellName`: the name after a `$` and how many bytes it took.
fn shell_name(s: &str) -> (&str, usize) {
    let b = s.as_bytes();
    if b[0] == b'{' {
        if b.len() > 2 && is_shell_special(b[1]) && b[2] == b'}' {
            return (&s[1..2], 3);
        }
        for i in 1..b.len() {
            if b[i] == b'}' {
                if i == 1 {
                    return ("", 2); // "${}"
                }
                return (&s[1..i], i + 1);
            }
        }
        return ("", 1); // "${" without a closing brace
    }
    if is_shell_special(b[0]) {
        return (&s[0..1], 1);
    }
    let n = b.iter().take_while(|c| is_alnum(**c)).count();
    (&s[..n], n)
}

/// A resolved namespace template, checked as a namespace name (DNS-1123 label), with the
/// sidecars' message when it is not one.
pub fn checked_namespace(template: &str, resolved: String) -> Result<String, String> {
    checked(template, resolved, is_dns1123_label, "namespace")
}

/// A resolved name template, checked as a Secret name (DNS-1123 subdomain), with the sidecars'
/// message when it is not one.
pub fn checked_secret_name(template: &str, resolved: String) -> Result<String, String> {
    checked(template, resolved, is_dns1123_subdomain, "secret")
}

fn checked(
    template: &str,
    resolved: String,
    valid: fn(&str) -> bool,
    what: &str,
) -> Result<String, String> {
    if valid(&resolved) {
        Ok(resolved)
    } else if resolved != template {
        Err(format!(
            "{} resolved to {} which is not a valid {what} name",
            go_quote(template),
            go_quote(&resolved)
        ))
    } else {
        Err(format!("{} is not a valid {what} name", go_quote(template)))
    }
}

/// Go's `%q` of a string (enough of it for names and templates).
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn is_label_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Kubernetes `IsDNS1123Label`.
pub fn is_dns1123_label(s: &str) -> bool {
    s.len() <= 63 && is_label_part(s)
}

/// Kubernetes `IsDNS1123Subdomain`.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_label_part)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[rstest]
    #[case("${pv.name}", "pvc-1")]
    #[case("$pv", "")] // `$pv.name` reads the name `pv`: unknown
    #[case("a-${pvc.name}-b", "a-claim-b")]
    #[case("${pvc.annotations['team']}", "blue")]
    #[case("plain", "plain")]
    #[case("cost$", "cost$")]
    #[case("a${}b", "ab")] // Go eats "${}"
    #[case("a${b", "ab")] // Go eats "${"
    #[case("$$x", "x")] // `$$` is the special name `$`
    fn os_expand_matches_go(#[case] template: &str, #[case] want: &str) {
        let params = map(&[
            ("pv.name", "pvc-1"),
            ("pvc.name", "claim"),
            ("pvc.annotations['team']", "blue"),
        ]);
        let got = os_expand(template, |k| params.get(k).cloned().unwrap_or_default());
        assert_eq!(got, want);
    }

    #[test]
    fn unknown_tokens_are_listed_sorted() {
        let err = resolve_template("${b}-${a}-${pv.name}", &map(&[("pv.name", "x")])).unwrap_err();
        assert_eq!(err, "invalid tokens: [\"a\" \"b\"]");
    }

    #[rstest]
    #[case("a", true, true)]
    #[case("a-b", true, true)]
    #[case("a.b", false, true)]
    #[case("-a", false, false)]
    #[case("A", false, false)]
    #[case("", false, false)]
    #[case(&"a".repeat(64), false, true)]
    #[case("a..b", false, false)]
    fn dns_names(#[case] s: &str, #[case] label: bool, #[case] subdomain: bool) {
        assert_eq!(is_dns1123_label(s), label, "label {s}");
        assert_eq!(is_dns1123_subdomain(s), subdomain, "subdomain {s}");
    }
}
