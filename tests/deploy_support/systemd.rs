//! systemd unit files, read as systemd reads them (systemd.syntax(7)): `[Section]` headers,
//! `Key=Value` assignments, comment lines starting with `#` or `;`, a trailing backslash
//! joining a line to the next; repeated keys are all kept, in order. Plus systemd time spans
//! and the `SPECFLOW__` lines of the EnvironmentFile examples.
//!
//! No crate parses unit files (INI crates differ on repeated keys and continuations), so this
//! is a small reader of just that format; `deploy_systemd` tests it.

use super::read;

/// One `Key=Value` assignment of a unit file, with the section it is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub section: String,
    pub key: String,
    pub value: String,
}

/// A unit file's assignments in file order.
pub struct Unit {
    pub file: String,
    pub settings: Vec<Setting>,
}

impl Unit {
    /// Reads and parses a unit file of the repository; panics naming the file and line.
    pub fn load(file: &str) -> Self {
        let settings = parse_unit(&read(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        Self {
            file: file.to_string(),
            settings,
        }
    }

    /// The last value of `key` in `[section]` (later assignments win, for single-valued keys).
    pub fn value(&self, section: &str, key: &str) -> Option<&str> {
        self.values(section, key).last().copied()
    }

    /// Every value of `key` in `[section]`, in order (list-valued keys such as
    /// `EnvironmentFile=` add one entry per assignment).
    pub fn values(&self, section: &str, key: &str) -> Vec<&str> {
        self.settings
            .iter()
            .filter(|s| s.section == section && s.key == key)
            .map(|s| s.value.as_str())
            .collect()
    }

    /// Whether `key` is assigned in any section.
    pub fn sets(&self, key: &str) -> bool {
        self.settings.iter().any(|s| s.key == key)
    }
}

/// The assignments of unit file text, in order; an error names the line that is neither a
/// comment, a `[Section]` header nor a `Key=Value` inside a section.
pub fn parse_unit(text: &str) -> Result<Vec<Setting>, String> {
    let mut settings = Vec::new();
    let mut section: Option<String> = None;
    // A logical line: physical lines joined at trailing backslashes, and where it started.
    let mut logical = String::new();
    let mut start = 0;
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let continuing = !logical.is_empty();
        // Comment lines are skipped, even between continued lines.
        if line.starts_with(['#', ';']) || (line.is_empty() && !continuing) {
            continue;
        }
        if !continuing {
            start = index + 1;
        }
        if let Some(head) = line.strip_suffix('\\') {
            logical.push_str(head.trim_end());
            logical.push(' ');
            continue;
        }
        logical.push_str(line);
        parse_line(logical.trim_end(), start, &mut section, &mut settings)?;
        logical.clear();
    }
    if !logical.is_empty() {
        parse_line(logical.trim_end(), start, &mut section, &mut settings)?;
    }
    Ok(settings)
}

/// One logical line: a section header (which becomes `section`) or an assignment.
fn parse_line(
    line: &str,
    number: usize,
    section: &mut Option<String>,
    settings: &mut Vec<Setting>,
) -> Result<(), String> {
    if let Some(header) = line.strip_prefix('[') {
        let name = header
            .strip_suffix(']')
            .ok_or_else(|| format!("line {number}: unterminated section header {line}"))?;
        *section = Some(name.to_string());
        return Ok(());
    }
    let (key, value) = line
        .split_once('=')
        .ok_or_else(|| format!("line {number}: {line} is neither [Section] nor Key=Value"))?;
    let section = section
        .clone()
        .ok_or_else(|| format!("line {number}: {} is set outside any [Section]", key.trim()))?;
    settings.push(Setting {
        section,
        key: key.trim().to_string(),
        value: value.trim().to_string(),
    });
    Ok(())
}

/// A systemd time span in seconds: "45", "45s", "1min 30s", "2m"; None for others.
pub fn timespan_secs(text: &str) -> Option<f64> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = 0.0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..digits].parse().ok()?;
        rest = rest[digits..].trim_start();
        let unit_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "" | "s" | "sec" | "second" | "seconds" => 1.0,
            "ms" | "msec" => 0.001,
            "us" | "usec" => 0.000_001,
            "m" | "min" | "minute" | "minutes" => 60.0,
            "h" | "hr" | "hour" | "hours" => 3600.0,
            _ => return None,
        };
        rest = rest[unit_len..].trim_start();
        total += number * scale;
    }
    Some(total)
}

/// The `SPECFLOW__KEY=value` lines of an EnvironmentFile example, commented out or not.
pub fn example_env(file: &str) -> Vec<(String, String)> {
    read(file)
        .lines()
        .map(|l| l.trim().trim_start_matches('#').trim())
        .filter(|l| l.starts_with("SPECFLOW__"))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
