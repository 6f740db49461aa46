//! The Dockerfile's instructions, read just far enough for `deploy_container`: comment and
//! empty lines dropped, backslash continuations joined, the instruction upper-cased and its
//! arguments kept as written (shell or exec form alike).

/// One instruction: its name (`FROM`, `COPY`, ...) and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    pub name: String,
    pub args: String,
}

/// The instructions of Dockerfile text, in order.
pub fn parse_dockerfile(text: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        // Comment lines are dropped, even inside a continued instruction (as Docker does).
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (name, args) = current
            .split_once(char::is_whitespace)
            .unwrap_or((current.as_str(), ""));
        out.push(Instruction {
            name: name.to_ascii_uppercase(),
            args: args.trim().to_string(),
        });
        current.clear();
    }
    out
}

/// The arguments of every `name` instruction among `instructions`.
pub fn args_of<'a>(instructions: &'a [Instruction], name: &str) -> Vec<&'a str> {
    instructions
        .iter()
        .filter(|i| i.name == name)
        .map(|i| i.args.as_str())
        .collect()
}
