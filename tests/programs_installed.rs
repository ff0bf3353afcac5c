//! Every program that the daemon, the test kit, a test, a bench, an example or a script starts
//! is named in the PROGRAMS list of scripts/setup.sh, the one list it installs from; and, on this
//! machine, every program that list names is installed.
//!
//! A fresh node has only what setup.sh installs, so a program started but not listed passes on
//! a machine that happens to have it and fails everywhere else. The sources are read, not run:
//! Rust through a small lexer (`Command::new`, helpers that pass a program name through their
//! parameters, `sh -c` scripts), shell through a small parser (the first word of every simple
//! command, and what `exec`, `timeout`, `xargs`, `trap`, `sh -c`… run). What the readers cannot
//! name is reported too, so nothing starts a program unseen.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The file holding the list; the list is its here-document between `<<'PROGRAMS'` and
/// `PROGRAMS`, and line numbers in messages are the file's.
const LIST: &str = "scripts/setup.sh";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------------------------
// The list
// ---------------------------------------------------------------------------------------------

/// Where a listed package comes from: scripts/setup.sh installs "base" and "apt" packages with
/// apt-get when missing (base ones never are on Debian 12) and checks "rust" programs only.
#[derive(Debug)]
struct Entry {
    kind: String,
    package: String,
    programs: Vec<String>,
    line: usize,
}

fn read_list() -> Vec<Entry> {
    let text = fs::read_to_string(repo().join(LIST)).expect("read scripts/setup.sh");
    let start = text
        .lines()
        .position(|l| l.contains("<<'PROGRAMS'"))
        .unwrap_or_else(|| panic!("{LIST} has no `<<'PROGRAMS'` list"));
    let mut entries = Vec::new();
    for (n, raw) in text
        .lines()
        .enumerate()
        .skip(start + 1)
        .take_while(|(_, l)| *l != "PROGRAMS")
    {
        let line = raw.split('#').next().unwrap().trim();
        if line.is_empty() {
            continue;
        }
        let (head, programs) = line
            .split_once(':')
            .unwrap_or_else(|| panic!("{LIST}:{}: want `KIND PACKAGE: PROGRAM...`", n + 1));
        let head: Vec<&str> = head.split_whitespace().collect();
        assert!(
            head.len() == 2 && ["base", "apt", "rust"].contains(&head[0]),
            "{LIST}:{}: want `KIND PACKAGE: PROGRAM...` with KIND base, apt or rust",
            n + 1
        );
        entries.push(Entry {
            kind: head[0].to_owned(),
            package: head[1].to_owned(),
            programs: programs.split_whitespace().map(str::to_owned).collect(),
            line: n + 1,
        });
    }
    entries
}

fn listed_programs(entries: &[Entry]) -> BTreeMap<String, usize> {
    let mut listed = BTreeMap::new();
    for e in entries {
        for p in &e.programs {
            if let Some(first) = listed.insert(p.clone(), e.line) {
                panic!("{LIST}:{}: `{p}` is listed already on line {first}", e.line);
            }
        }
    }
    listed
}

// ---------------------------------------------------------------------------------------------
// What the sources start
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Found {
    /// (file, line, program)
    uses: Vec<(String, usize, String)>,
    /// (file, line, why the program's name cannot be read)
    unreadable: Vec<(String, usize, String)>,
}

impl Found {
    fn program(&mut self, file: &str, line: usize, name: &str) {
        // An absolute path names a system program: the list knows it by its base name.
        // A relative one (scripts/x.sh, target/release/…) is the project's own file.
        let name = if name.starts_with('/') {
            name.rsplit('/').next().unwrap()
        } else if name.contains('/') {
            return;
        } else {
            name
        };
        if !name.is_empty() {
            self.uses.push((file.to_owned(), line, name.to_owned()));
        }
    }

    fn unreadable(&mut self, file: &str, line: usize, why: impl Into<String>) {
        self.unreadable.push((file.to_owned(), line, why.into()));
    }

    fn programs(&self) -> BTreeSet<&str> {
        self.uses.iter().map(|(_, _, p)| p.as_str()).collect()
    }
}

/// Programs that run the program named among their arguments: the options that take a value
/// (so the value is not taken for the program) and how many operands come first.
fn runner(name: &str) -> Option<(&'static [&'static str], usize)> {
    Some(match name {
        "timeout" => (&["-s", "--signal", "-k", "--kill-after"], 1),
        "env" => (
            &["-u", "--unset", "-C", "--chdir", "-S", "--split-string"],
            0,
        ),
        "nice" => (&["-n", "--adjustment"], 0),
        "ionice" => (&["-c", "--class", "-n", "--classdata", "-p", "-P", "-u"], 0),
        "xargs" => (
            &[
                "-a",
                "-d",
                "-E",
                "-I",
                "-L",
                "-n",
                "-P",
                "-s",
                "--arg-file",
                "--delimiter",
                "--max-args",
                "--max-procs",
                "--max-lines",
                "--max-chars",
            ],
            0,
        ),
        "stdbuf" => (&["-i", "-o", "-e"], 0),
        "nohup" | "setsid" | "sudo" | "unshare" | "nsenter" => (&[], 0),
        "taskset" | "chrt" | "flock" => (&[], 1),
        _ => return None,
    })
}

fn is_assignment(word: &str) -> bool {
    let Some(eq) = word.find('=') else {
        return false;
    };
    let name = word[..eq].trim_end_matches('+');
    let name = name.split('[').next().unwrap();
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

// ---------------------------------------------------------------------------------------------
// Shell
// ---------------------------------------------------------------------------------------------

const SH_BUILTINS: &[&str] = &[
    ":",
    ".",
    "[",
    "alias",
    "bg",
    "bind",
    "break",
    "builtin",
    "caller",
    "cd",
    "command",
    "compgen",
    "complete",
    "continue",
    "declare",
    "dirs",
    "disown",
    "echo",
    "enable",
    "eval",
    "exec",
    "exit",
    "export",
    "false",
    "fc",
    "fg",
    "getopts",
    "hash",
    "help",
    "history",
    "jobs",
    "kill",
    "let",
    "local",
    "logout",
    "mapfile",
    "popd",
    "printf",
    "pushd",
    "pwd",
    "read",
    "readarray",
    "readonly",
    "return",
    "set",
    "shift",
    "shopt",
    "source",
    "suspend",
    "test",
    "times",
    "trap",
    "true",
    "type",
    "typeset",
    "ulimit",
    "umask",
    "unalias",
    "unset",
    "wait",
];

#[derive(Debug, Clone)]
enum ShTok {
    Word {
        /// The word with quotes removed and every expansion replaced by \u{0}.
        value: String,
        /// No expansion: `value` is exactly what the shell would see.
        literal: bool,
        line: usize,
        /// Commands inside the word: $(…), `…`, <(…), and those of array assignments.
        subs: Vec<Vec<ShTok>>,
    },
    Op {
        op: &'static str,
        /// Commands in an unquoted heredoc's body, or in an arithmetic command.
        subs: Vec<Vec<ShTok>>,
    },
    Newline,
}

const SH_OPS: &[&str] = &[
    ";;&", "<<<", "<<-", "&>>", "&&", "||", ";;", ";&", "|&", "<<", ">>", ">&", "<&", ">|", "<>",
    "&>", "|", "&", ";", "(", ")", "<", ">",
];

struct ShLexer {
    c: Vec<char>,
    i: usize,
    line: usize,
    /// (delimiter, strip leading tabs, expand the body)
    heredocs: Vec<(String, bool, bool)>,
    heredoc_subs: Vec<Vec<ShTok>>,
}

impl ShLexer {
    fn new(text: &str, line: usize) -> ShLexer {
        ShLexer {
            c: text.chars().collect(),
            i: 0,
            line,
            heredocs: Vec::new(),
            heredoc_subs: Vec::new(),
        }
    }

    fn peek(&self, k: usize) -> char {
        self.c.get(self.i + k).copied().unwrap_or('\0')
    }

    fn starts(&self, s: &str) -> bool {
        s.chars().enumerate().all(|(k, ch)| self.peek(k) == ch)
    }

    fn bump(&mut self) -> char {
        let ch = self.peek(0);
        self.i += 1;
        if ch == '\n' {
            self.line += 1;
        }
        ch
    }

    fn eof(&self) -> bool {
        self.i >= self.c.len()
    }

    /// Tokens up to the end, or up to the `)` that closes the one the caller consumed.
    fn tokens(&mut self, nested: bool) -> Vec<ShTok> {
        let mut out = Vec::new();
        let mut depth = 0usize;
        while !self.eof() {
            let ch = self.peek(0);
            if ch == ' ' || ch == '\t' || ch == '\r' {
                self.i += 1;
            } else if ch == '\\' && self.peek(1) == '\n' {
                self.bump();
                self.bump();
            } else if ch == '\n' {
                self.bump();
                out.push(ShTok::Newline);
                self.read_heredocs();
                if let Some(ShTok::Op { subs, .. }) = out.iter_mut().rev().find(|t| {
                    matches!(
                        t,
                        ShTok::Op {
                            op: "<<" | "<<-",
                            ..
                        }
                    )
                }) {
                    subs.append(&mut self.heredoc_subs);
                }
            } else if ch == '#' {
                while !self.eof() && self.peek(0) != '\n' {
                    self.i += 1;
                }
            } else if (ch == '<' || ch == '>') && self.peek(1) == '(' {
                out.push(self.word());
            } else if self.starts("((") {
                // An arithmetic command (also `for ((…))`): its words are not commands.
                self.i += 2;
                let subs = self.arithmetic();
                out.push(ShTok::Op { op: "((", subs });
            } else if let Some(op) = SH_OPS.iter().find(|op| self.starts(op)) {
                self.i += op.len();
                if *op == "(" {
                    depth += 1;
                }
                if *op == ")" {
                    if nested && depth == 0 {
                        return out;
                    }
                    depth = depth.saturating_sub(1);
                }
                if *op == "<<" || *op == "<<-" {
                    self.heredoc_start(*op == "<<-");
                }
                out.push(ShTok::Op {
                    op,
                    subs: Vec::new(),
                });
            } else if ch.is_ascii_digit() && self.fd_redirect() {
                // `2>&1`, `2>/dev/null`: the digits are part of the redirection.
                while self.peek(0).is_ascii_digit() {
                    self.i += 1;
                }
            } else {
                out.push(self.word());
            }
        }
        out
    }

    fn fd_redirect(&self) -> bool {
        let mut k = 0;
        while self.peek(k).is_ascii_digit() {
            k += 1;
        }
        matches!(self.peek(k), '<' | '>')
    }

    fn heredoc_start(&mut self, strip: bool) {
        while self.peek(0) == ' ' || self.peek(0) == '\t' {
            self.i += 1;
        }
        let ShTok::Word { value, .. } = self.word() else {
            unreachable!()
        };
        // Any quote in the delimiter turns expansion off in the body.
        let start = self.c[..self.i]
            .iter()
            .rposition(|c| c.is_whitespace() || *c == '<')
            .map_or(0, |p| p + 1);
        let quoted = self.c[start..self.i]
            .iter()
            .any(|c| matches!(c, '\'' | '"' | '\\'));
        self.heredocs.push((value, strip, !quoted));
    }

    fn read_heredocs(&mut self) {
        for (delim, strip, expand) in std::mem::take(&mut self.heredocs) {
            while !self.eof() {
                let start = self.i;
                let first_line = self.line;
                while !self.eof() && self.peek(0) != '\n' {
                    self.i += 1;
                }
                let text: String = self.c[start..self.i].iter().collect();
                if !self.eof() {
                    self.bump();
                }
                let body = if strip {
                    text.trim_start_matches('\t')
                } else {
                    &text
                };
                if body == delim {
                    break;
                }
                if expand {
                    let mut sub = ShLexer::new(&text, first_line);
                    let subs = sub.expansions_only();
                    self.heredoc_subs.extend(subs);
                }
            }
        }
    }

    /// A heredoc body's line: only its $(…) and `…` run anything.
    fn expansions_only(&mut self) -> Vec<Vec<ShTok>> {
        let mut subs = Vec::new();
        while !self.eof() {
            if self.peek(0) == '\\' {
                self.i += 2;
            } else if self.peek(0) == '$' || self.peek(0) == '`' {
                self.dollar_or_backtick(&mut subs);
            } else {
                self.bump();
            }
        }
        subs
    }

    /// At `$` or a backtick: consume the expansion, adding the commands it runs to `subs`.
    /// Returns whether an expansion was consumed (a lone `$` is literal).
    fn dollar_or_backtick(&mut self, subs: &mut Vec<Vec<ShTok>>) -> bool {
        if self.peek(0) == '`' {
            self.i += 1;
            let start = self.i;
            let line = self.line;
            while !self.eof() && self.peek(0) != '`' {
                if self.peek(0) == '\\' {
                    self.i += 1;
                }
                self.bump();
            }
            let inner: String = self.c[start..self.i.min(self.c.len())].iter().collect();
            self.i += 1;
            subs.push(ShLexer::new(&inner, line).tokens(false));
            return true;
        }
        if self.starts("$((") {
            self.i += 3;
            subs.extend(self.arithmetic());
        } else if self.starts("$(") {
            self.i += 2;
            subs.push(self.tokens(true));
        } else if self.starts("${") {
            self.i += 2;
            let mut depth = 0;
            while !self.eof() {
                match self.peek(0) {
                    '}' if depth == 0 => {
                        self.i += 1;
                        break;
                    }
                    '}' => {
                        depth -= 1;
                        self.i += 1;
                    }
                    '{' => {
                        depth += 1;
                        self.i += 1;
                    }
                    '\\' => self.i += 2,
                    '\'' => {
                        self.i += 1;
                        while !self.eof() && self.bump() != '\'' {}
                    }
                    '"' => {
                        self.i += 1;
                        let mut ignored = String::new();
                        self.double_quoted(&mut ignored, subs);
                    }
                    '$' | '`' => {
                        if !self.dollar_or_backtick(subs) {
                            self.i += 1;
                        }
                    }
                    _ => {
                        self.bump();
                    }
                }
            }
        } else if self.peek(1).is_ascii_alphanumeric() || "_@*#?$!-".contains(self.peek(1)) {
            self.i += 1;
            if self.peek(0).is_ascii_alphabetic() || self.peek(0) == '_' {
                while self.peek(0).is_ascii_alphanumeric() || self.peek(0) == '_' {
                    self.i += 1;
                }
            } else {
                self.i += 1;
            }
        } else {
            return false;
        }
        self.i = self.i.min(self.c.len());
        true
    }

    /// After `((` or `$((`, through the closing `))`: no words are commands, but a $(…) is.
    fn arithmetic(&mut self) -> Vec<Vec<ShTok>> {
        let mut subs = Vec::new();
        let mut depth = 0;
        while !self.eof() {
            if self.starts("))") && depth == 0 {
                self.i += 2;
                break;
            }
            match self.peek(0) {
                '(' => depth += 1,
                ')' => depth -= 1,
                '$' | '`' if self.dollar_or_backtick(&mut subs) => continue,
                _ => {}
            }
            self.bump();
        }
        subs
    }

    /// After an opening `"`, through the closing one.
    fn double_quoted(&mut self, value: &mut String, subs: &mut Vec<Vec<ShTok>>) -> bool {
        let mut literal = true;
        while !self.eof() {
            match self.peek(0) {
                '"' => {
                    self.i += 1;
                    break;
                }
                '\\' => {
                    self.i += 1;
                    let ch = self.bump();
                    if !matches!(ch, '"' | '\\' | '$' | '`' | '\n') {
                        value.push('\\');
                    }
                    if ch != '\n' {
                        value.push(ch);
                    }
                }
                '$' | '`' => {
                    if self.dollar_or_backtick(subs) {
                        value.push('\0');
                        literal = false;
                    } else {
                        value.push(self.bump());
                    }
                }
                _ => value.push(self.bump()),
            }
        }
        literal
    }

    fn word(&mut self) -> ShTok {
        let line = self.line;
        let mut value = String::new();
        let mut literal = true;
        let mut subs = Vec::new();
        if (self.peek(0) == '<' || self.peek(0) == '>') && self.peek(1) == '(' {
            // Process substitution: its commands run, the word itself is a path.
            self.i += 2;
            subs.push(self.tokens(true));
            value.push('\0');
            literal = false;
        }
        while !self.eof() {
            let ch = self.peek(0);
            match ch {
                ' ' | '\t' | '\r' | '\n' | ';' | '&' | '|' | '<' | '>' | ')' => break,
                '(' => {
                    if is_assignment(&value) && value.ends_with('=') {
                        // NAME=( … ): the elements are words, never commands.
                        self.i += 1;
                        for t in self.tokens(true) {
                            if let ShTok::Word { subs: s, .. } = t {
                                subs.extend(s);
                            }
                        }
                        value.push_str("(…)");
                        literal = false;
                        continue;
                    }
                    break;
                }
                '\\' => {
                    self.i += 1;
                    let next = self.bump();
                    if next != '\n' {
                        value.push(next);
                    }
                }
                '\'' => {
                    self.i += 1;
                    while !self.eof() && self.peek(0) != '\'' {
                        value.push(self.bump());
                    }
                    self.i += 1;
                }
                '"' => {
                    self.i += 1;
                    literal &= self.double_quoted(&mut value, &mut subs);
                }
                '$' if self.peek(1) == '\'' => {
                    self.i += 2;
                    while !self.eof() && self.peek(0) != '\'' {
                        if self.peek(0) == '\\' {
                            value.push(self.bump());
                        }
                        value.push(self.bump());
                    }
                    self.i += 1;
                }
                '$' | '`' => {
                    if self.dollar_or_backtick(&mut subs) {
                        value.push('\0');
                        literal = false;
                    } else {
                        value.push(self.bump());
                    }
                }
                _ => value.push(self.bump()),
            }
        }
        self.i = self.i.min(self.c.len());
        ShTok::Word {
            value,
            literal,
            line,
            subs,
        }
    }
}

/// Names of the functions a script defines (`name() …`, `function name …`), at any depth.
fn sh_functions(toks: &[ShTok], out: &mut HashSet<String>) {
    for (k, t) in toks.iter().enumerate() {
        match t {
            ShTok::Word { value, subs, .. } => {
                let next_is = |d: usize, op: &str| matches!(toks.get(k + d), Some(ShTok::Op { op: o, .. }) if *o == op);
                if next_is(1, "(") && next_is(2, ")") {
                    out.insert(value.clone());
                }
                if value == "function" {
                    if let Some(ShTok::Word { value: name, .. }) = toks.get(k + 1) {
                        out.insert(name.trim_end_matches("()").to_owned());
                    }
                }
                for s in subs {
                    sh_functions(s, out);
                }
            }
            ShTok::Op { subs, .. } => {
                for s in subs {
                    sh_functions(s, out);
                }
            }
            ShTok::Newline => {}
        }
    }
}

/// The functions a script gets from the repository's files it sources (`source scripts/x.sh`
/// or `. scripts/x.sh`, paths relative to the repository root, where every script `cd`s).
/// The sourced files are scanned themselves as scripts of their own.
fn sourced_functions(root: &Path, text: &str) -> HashSet<String> {
    let mut out = HashSet::new();
    for line in text.lines() {
        let line = line.trim();
        let Some(path) = line
            .strip_prefix("source ")
            .or_else(|| line.strip_prefix(". "))
            .map(str::trim)
        else {
            continue;
        };
        let lib = fs::read_to_string(root.join(path))
            .unwrap_or_else(|e| panic!("a script sources {path}, which cannot be read: {e}"));
        sh_functions(&ShLexer::new(&lib, 1).tokens(false), &mut out);
    }
    out
}

/// Scans a shell script (a file, or a string a Rust source hands to `sh -c`).
fn scan_shell(file: &str, text: &str, first_line: usize, found: &mut Found) {
    scan_shell_in(file, text, first_line, &HashSet::new(), found);
}

/// `outer`: the functions of the script around this one (a `trap` or `eval` string runs them).
fn scan_shell_in(
    file: &str,
    text: &str,
    first_line: usize,
    outer: &HashSet<String>,
    found: &mut Found,
) {
    let toks = ShLexer::new(text, first_line).tokens(false);
    let mut functions = outer.clone();
    sh_functions(&toks, &mut functions);
    ShParser {
        file,
        functions: &functions,
        found,
    }
    .commands(&toks);
}

struct ShParser<'a> {
    file: &'a str,
    functions: &'a HashSet<String>,
    found: &'a mut Found,
}

/// What the words after a command's name mean.
enum Args {
    Plain,
    /// `trap 'cmds' SIG`, `eval …`: the first argument is shell.
    Script,
    /// `sh -c 'cmds'`: shell after `-c`.
    ShellC {
        after_c: bool,
    },
    /// `timeout 5 prog`, `xargs -n1 prog`: a program after options and operands.
    Runner {
        value_opts: &'static [&'static str],
        operands: usize,
        skip_value: bool,
        /// `command`: with -v or -V it only looks the name up.
        lookup: bool,
    },
    /// `cargo fmt` runs cargo-fmt, `cargo clippy` cargo-clippy.
    Cargo,
    /// `command -v x` only looks x up.
    Ignore,
}

impl ShParser<'_> {
    fn commands(&mut self, toks: &[ShTok]) {
        let mut cmd_pos = true;
        let mut args = Args::Plain;
        let mut redirect_target = false;
        let mut skip_until: Option<&str> = None;
        let mut case_depth = 0usize;
        let mut case_subject = false;
        let mut in_pattern = false;
        let mut k = 0;
        while k < toks.len() {
            let tok = &toks[k];
            k += 1;
            // Commands inside words and heredocs run wherever the word stands.
            match tok {
                ShTok::Word { subs, .. } | ShTok::Op { subs, .. } => {
                    for s in subs {
                        self.commands(s);
                    }
                }
                ShTok::Newline => {}
            }
            let (value, literal, line) = match tok {
                ShTok::Word {
                    value,
                    literal,
                    line,
                    ..
                } => (value.as_str(), *literal, *line),
                ShTok::Newline | ShTok::Op { .. } => {
                    let op = match tok {
                        ShTok::Op { op, .. } => *op,
                        _ => "\n",
                    };
                    if skip_until.is_some() || op == "((" {
                        continue;
                    }
                    match op {
                        ";;" | ";&" | ";;&" if case_depth > 0 => {
                            in_pattern = true;
                            cmd_pos = false;
                        }
                        ")" if in_pattern => {
                            in_pattern = false;
                            cmd_pos = true;
                            args = Args::Plain;
                        }
                        "(" if in_pattern => {}
                        "|" if in_pattern => {}
                        ")" => cmd_pos = false,
                        "\n" | ";" | "&" | "&&" | "||" | "|" | "|&" | "(" => {
                            cmd_pos = !in_pattern;
                            args = Args::Plain;
                        }
                        "<<" | "<<-" => {}
                        _ => redirect_target = true,
                    }
                    continue;
                }
            };
            if redirect_target {
                redirect_target = false;
                continue;
            }
            if let Some(end) = skip_until {
                if value == end {
                    skip_until = None;
                    cmd_pos = end == "do";
                }
                continue;
            }
            if case_subject {
                if value == "in" {
                    case_subject = false;
                    in_pattern = true;
                }
                continue;
            }
            if in_pattern {
                if value == "esac" {
                    in_pattern = false;
                    case_depth -= 1;
                    cmd_pos = false;
                }
                continue;
            }
            if !cmd_pos {
                self.argument(&mut args, value, line, &mut cmd_pos);
                if cmd_pos {
                    // A runner's program: read it as a command name, below.
                } else {
                    continue;
                }
            }
            // A function definition: `name() {`.
            if matches!(toks.get(k), Some(ShTok::Op { op: "(", .. }))
                && matches!(toks.get(k + 1), Some(ShTok::Op { op: ")", .. }))
            {
                k += 2;
                continue;
            }
            if is_assignment(value) {
                continue;
            }
            match value {
                "if" | "then" | "else" | "elif" | "do" | "while" | "until" | "!" | "{" | "time" => {
                    continue
                }
                "fi" | "done" | "}" => {
                    cmd_pos = false;
                    continue;
                }
                "esac" => {
                    case_depth = case_depth.saturating_sub(1);
                    cmd_pos = false;
                    continue;
                }
                "case" => {
                    case_depth += 1;
                    case_subject = true;
                    continue;
                }
                "for" | "select" => {
                    skip_until = Some("do");
                    continue;
                }
                "[[" => {
                    skip_until = Some("]]");
                    continue;
                }
                "function" => {
                    k += 1;
                    continue;
                }
                _ => {}
            }
            cmd_pos = false;
            args = Args::Plain;
            if !literal {
                // "$bin/imagecached", "$@": a variable names it; the project builds those.
                continue;
            }
            if value == "exec" || value == "builtin" {
                cmd_pos = true;
                continue;
            }
            if value == "command" {
                args = Args::Runner {
                    value_opts: &[],
                    operands: 0,
                    skip_value: false,
                    lookup: true,
                };
                continue;
            }
            if ["trap", "eval"].contains(&value) {
                args = Args::Script;
                continue;
            }
            if SH_BUILTINS.contains(&value) || self.functions.contains(value) {
                continue;
            }
            self.found.program(self.file, line, value);
            if let Some((value_opts, operands)) = runner(value) {
                args = Args::Runner {
                    value_opts,
                    operands,
                    skip_value: false,
                    lookup: false,
                };
            } else if ["sh", "bash", "dash"].contains(&value) {
                args = Args::ShellC { after_c: false };
            } else if value == "cargo" {
                args = Args::Cargo;
            }
        }
    }

    fn argument(&mut self, args: &mut Args, value: &str, line: usize, cmd_pos: &mut bool) {
        match args {
            Args::Plain | Args::Ignore => {}
            Args::Script => {
                let text = value.replace('\0', "x");
                scan_shell_in(self.file, &text, line, self.functions, self.found);
                *args = Args::Plain;
            }
            Args::ShellC { after_c } => {
                if *after_c {
                    // A new shell: it knows none of this script's functions.
                    scan_shell(self.file, &value.replace('\0', "x"), line, self.found);
                    *args = Args::Plain;
                } else if value.starts_with('-') && !value.starts_with("--") && value.contains('c')
                {
                    *after_c = true;
                } else if !value.starts_with('-') {
                    *args = Args::Plain;
                }
            }
            Args::Runner {
                value_opts,
                operands,
                skip_value,
                lookup,
            } => {
                if *skip_value {
                    *skip_value = false;
                } else if *lookup && (value == "-v" || value == "-V") {
                    *args = Args::Ignore;
                } else if value.starts_with('-') {
                    *skip_value = value_opts.contains(&value);
                } else if is_assignment(value) {
                    // `env NAME=value prog`
                } else if *operands > 0 {
                    *operands -= 1;
                } else {
                    *cmd_pos = true;
                }
            }
            Args::Cargo => {
                if !value.starts_with('-') && !value.starts_with('+') {
                    if ["fmt", "clippy"].contains(&value) {
                        self.found
                            .program(self.file, line, &format!("cargo-{value}"));
                    }
                    *args = Args::Plain;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Rust
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum RTok {
    Ident(String),
    Str(String),
    Num(String),
    Punct(String),
    Lifetime,
}

#[derive(Debug, Clone)]
struct RToken {
    t: RTok,
    line: usize,
}

fn lex_rust(src: &str) -> Vec<RToken> {
    let c: Vec<char> = src.chars().collect();
    let at = |k: usize| c.get(k).copied().unwrap_or('\0');
    let mut out = Vec::new();
    let mut i = 0;
    let mut line = 1;
    while i < c.len() {
        let ch = c[i];
        let start_line = line;
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if c[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
        } else if ch == '"' {
            let (s, next) = rust_string(&c, i + 1, &mut line);
            i = next;
            out.push(RToken {
                t: RTok::Str(s),
                line: start_line,
            });
        } else if ch == '\'' {
            if at(i + 1) == '\\' {
                // '\n', '\'', '\u{…}': past the escaped character, then to the close.
                i += 3;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if at(i + 2) == '\'' {
                i += 3;
            } else {
                i += 1;
                while at(i).is_alphanumeric() || at(i) == '_' {
                    i += 1;
                }
                out.push(RToken {
                    t: RTok::Lifetime,
                    line,
                });
            }
        } else if ch.is_alphabetic() || ch == '_' {
            let s = i;
            while at(i).is_alphanumeric() || at(i) == '_' {
                i += 1;
            }
            let id: String = c[s..i].iter().collect();
            let raw_hashes = {
                let mut h = 0;
                while at(i + h) == '#' {
                    h += 1;
                }
                h
            };
            if matches!(id.as_str(), "r" | "br" | "cr") && at(i + raw_hashes) == '"' {
                // r"…", r#"…"#: no escapes, ends at `"` followed by as many `#`.
                let body = i + raw_hashes + 1;
                let mut j = body;
                loop {
                    if j >= c.len() {
                        break;
                    }
                    if c[j] == '"' && (0..raw_hashes).all(|h| at(j + 1 + h) == '#') {
                        break;
                    }
                    j += 1;
                }
                let s: String = c[body..j.min(c.len())].iter().collect();
                line += s.matches('\n').count();
                i = j + 1 + raw_hashes;
                out.push(RToken {
                    t: RTok::Str(s),
                    line: start_line,
                });
            } else if matches!(id.as_str(), "b" | "c") && at(i) == '"' {
                let (s, next) = rust_string(&c, i + 1, &mut line);
                i = next;
                out.push(RToken {
                    t: RTok::Str(s),
                    line: start_line,
                });
            } else if id == "b" && at(i) == '\'' {
                i += 1;
                if at(i) == '\\' {
                    i += 1;
                }
                i += 1;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if id == "r" && at(i) == '#' {
                let s = i + 1;
                i += 1;
                while at(i).is_alphanumeric() || at(i) == '_' {
                    i += 1;
                }
                out.push(RToken {
                    t: RTok::Ident(c[s..i].iter().collect()),
                    line,
                });
            } else {
                out.push(RToken {
                    t: RTok::Ident(id),
                    line,
                });
            }
        } else if ch.is_ascii_digit() {
            let s = i;
            while at(i).is_alphanumeric()
                || at(i) == '_'
                || (at(i) == '.' && at(i + 1).is_ascii_digit())
            {
                i += 1;
            }
            out.push(RToken {
                t: RTok::Num(c[s..i].iter().collect()),
                line,
            });
        } else {
            let two: String = [ch, at(i + 1)].iter().collect();
            let p = if ["::", "->", "=>"].contains(&two.as_str()) {
                two
            } else {
                ch.to_string()
            };
            i += p.chars().count();
            out.push(RToken {
                t: RTok::Punct(p),
                line,
            });
        }
    }
    out
}

/// A "…" literal's value from just after its opening quote; returns the index after the close.
fn rust_string(c: &[char], mut i: usize, line: &mut usize) -> (String, usize) {
    let mut s = String::new();
    while i < c.len() {
        let ch = c[i];
        i += 1;
        match ch {
            '"' => break,
            '\n' => {
                *line += 1;
                s.push('\n');
            }
            '\\' => {
                let e = c.get(i).copied().unwrap_or('\0');
                i += 1;
                match e {
                    'n' => s.push('\n'),
                    't' => s.push('\t'),
                    'r' => s.push('\r'),
                    '0' => s.push('\0'),
                    'x' => {
                        let hex: String = c[i..(i + 2).min(c.len())].iter().collect();
                        s.push(u8::from_str_radix(&hex, 16).unwrap_or(b'?') as char);
                        i += 2;
                    }
                    'u' => {
                        let end = c[i..].iter().position(|&x| x == '}').map_or(i, |p| i + p);
                        let hex: String = c[i + 1..end].iter().collect();
                        s.push(
                            u32::from_str_radix(&hex, 16)
                                .ok()
                                .and_then(char::from_u32)
                                .unwrap_or('?'),
                        );
                        i = end + 1;
                    }
                    '\n' => {
                        // A line continuation: the newline and the next line's indent go.
                        *line += 1;
                        while i < c.len() && c[i].is_whitespace() {
                            if c[i] == '\n' {
                                *line += 1;
                            }
                            i += 1;
                        }
                    }
                    other => s.push(other),
                }
            }
            _ => s.push(ch),
        }
    }
    (s, i)
}

struct RFile {
    path: String,
    toks: Vec<RToken>,
    /// For each opening bracket, the index of its closing one.
    close: Vec<usize>,
    callables: Vec<Callable>,
    /// May a bare `Command::new` here be std's (or tokio's) process builder?
    bare_command_is_process: bool,
}

/// A function or a `let name = |…|` closure whose parameters may carry a program's name.
#[derive(Debug)]
struct Callable {
    name: String,
    params: Vec<String>,
    method: bool,
    closure: bool,
    body: (usize, usize),
    /// Where a closure can be called: the block its `let` is in.
    scope: (usize, usize),
}

impl RFile {
    fn new(path: String, src: &str) -> RFile {
        let toks = lex_rust(src);
        let mut close = vec![usize::MAX; toks.len()];
        let mut stack = Vec::new();
        for (k, t) in toks.iter().enumerate() {
            if let RTok::Punct(p) = &t.t {
                match p.as_str() {
                    "(" | "[" | "{" => stack.push(k),
                    ")" | "]" | "}" => {
                        if let Some(o) = stack.pop() {
                            close[o] = k;
                        }
                    }
                    _ => {}
                }
            }
        }
        let mut f = RFile {
            path,
            toks,
            close,
            callables: Vec::new(),
            bare_command_is_process: true,
        };
        f.bare_command_is_process = !f.has_other_command();
        f.find_callables();
        f
    }

    fn ident(&self, k: usize) -> Option<&str> {
        match self.toks.get(k).map(|t| &t.t) {
            Some(RTok::Ident(s)) => Some(s),
            _ => None,
        }
    }

    fn is(&self, k: usize, p: &str) -> bool {
        matches!(self.toks.get(k).map(|t| &t.t), Some(RTok::Punct(x)) if x == p)
    }

    fn is_ident(&self, k: usize, s: &str) -> bool {
        self.ident(k) == Some(s)
    }

    fn end_of(&self, k: usize) -> usize {
        let e = self.close[k];
        if e == usize::MAX {
            self.toks.len()
        } else {
            e
        }
    }

    /// A `Command` of its own (an enum, a clap import) makes a bare `Command::new` not ours.
    fn has_other_command(&self) -> bool {
        for k in 0..self.toks.len() {
            if (self.is_ident(k, "enum") || self.is_ident(k, "struct"))
                && self.is_ident(k + 1, "Command")
            {
                return true;
            }
            if self.is_ident(k, "use") {
                let end = (k..self.toks.len())
                    .find(|&e| self.is(e, ";"))
                    .unwrap_or(self.toks.len());
                let names_command = (k..end).any(|e| self.is_ident(e, "Command"));
                let from_process = (k..end).any(|e| self.is_ident(e, "process"));
                if names_command && !from_process {
                    return true;
                }
            }
        }
        false
    }

    /// Splits tokens [a, b) at top-level commas (bracket- and `<…>`-aware).
    fn split(&self, a: usize, b: usize, angle: bool) -> Vec<(usize, usize)> {
        let mut parts = Vec::new();
        let mut start = a;
        let mut k = a;
        let mut depth = 0i32;
        while k < b {
            if self.is(k, "(") || self.is(k, "[") || self.is(k, "{") {
                k = self.end_of(k) + 1;
                continue;
            }
            if angle && self.is(k, "<") {
                depth += 1;
            } else if angle && self.is(k, ">") {
                depth -= 1;
            } else if self.is(k, ",") && depth <= 0 {
                parts.push((start, k));
                start = k + 1;
            }
            k += 1;
        }
        if start < b {
            parts.push((start, b));
        }
        parts
    }

    /// Parameter names in [a, b): (names without self, has self).
    fn params(&self, a: usize, b: usize) -> (Vec<String>, bool) {
        let mut names = Vec::new();
        let mut method = false;
        for (s, e) in self.split(a, b, true) {
            let colon = (s..e).find(|&k| self.is(k, ":")).unwrap_or(e);
            if (s..colon).any(|k| self.is_ident(k, "self")) {
                method = true;
                continue;
            }
            let name = (s..colon)
                .rev()
                .filter_map(|k| self.ident(k))
                .find(|n| !["mut", "ref"].contains(n))
                .unwrap_or("_");
            names.push(name.to_owned());
        }
        (names, method)
    }

    fn innermost_block(&self, k: usize) -> (usize, usize) {
        let mut best = (0, self.toks.len());
        for o in 0..k {
            if self.is(o, "{") && self.end_of(o) > k && o > best.0 {
                best = (o, self.end_of(o));
            }
        }
        best
    }

    fn find_callables(&mut self) {
        let n = self.toks.len();
        let mut found = Vec::new();
        for k in 0..n {
            if self.is_ident(k, "fn") {
                let Some(name) = self.ident(k + 1) else {
                    continue;
                };
                let mut j = k + 2;
                if self.is(j, "<") {
                    let mut depth = 0;
                    while j < n {
                        if self.is(j, "<") {
                            depth += 1;
                        } else if self.is(j, ">") {
                            depth -= 1;
                            if depth == 0 {
                                j += 1;
                                break;
                            }
                        }
                        j += 1;
                    }
                }
                if !self.is(j, "(") {
                    continue;
                }
                let (params, method) = self.params(j + 1, self.end_of(j));
                let mut b = self.end_of(j) + 1;
                while b < n && !self.is(b, "{") && !self.is(b, ";") {
                    if self.is(b, "(") || self.is(b, "[") {
                        b = self.end_of(b);
                    }
                    b += 1;
                }
                if self.is(b, "{") {
                    found.push(Callable {
                        name: name.to_owned(),
                        params,
                        method,
                        closure: false,
                        body: (b, self.end_of(b)),
                        scope: (0, n),
                    });
                }
            }
            if self.is_ident(k, "let") {
                let mut j = k + 1;
                if self.is_ident(j, "mut") {
                    j += 1;
                }
                let Some(name) = self.ident(j) else {
                    continue;
                };
                j += 1;
                if !self.is(j, "=") {
                    continue;
                }
                j += 1;
                if self.is_ident(j, "move") {
                    j += 1;
                }
                if !self.is(j, "|") {
                    continue;
                }
                let Some(bar) = (j + 1..n).find(|&e| self.is(e, "|")) else {
                    continue;
                };
                let (params, _) = self.params(j + 1, bar);
                let body = if self.is(bar + 1, "{") {
                    (bar + 1, self.end_of(bar + 1))
                } else {
                    let mut e = bar + 1;
                    while e < n && !self.is(e, ";") {
                        if self.is(e, "(") || self.is(e, "[") || self.is(e, "{") {
                            e = self.end_of(e);
                        }
                        e += 1;
                    }
                    (bar, e)
                };
                found.push(Callable {
                    name: name.to_owned(),
                    params,
                    method: false,
                    closure: true,
                    body,
                    scope: self.innermost_block(k),
                });
            }
        }
        self.callables = found;
    }

    /// Callables whose body holds token k, innermost first.
    fn enclosing(&self, k: usize) -> Vec<usize> {
        let mut v: Vec<usize> = (0..self.callables.len())
            .filter(|&c| self.callables[c].body.0 < k && k < self.callables[c].body.1)
            .collect();
        v.sort_by_key(|&c| self.callables[c].body.1 - self.callables[c].body.0);
        v
    }

    /// The module a callable of this file is reached through (`tool` for src/image/tool.rs).
    fn module(&self) -> &str {
        let p = Path::new(&self.path);
        let stem = p.file_stem().unwrap().to_str().unwrap();
        if stem == "mod" {
            p.parent().unwrap().file_name().unwrap().to_str().unwrap()
        } else {
            stem
        }
    }

    /// Is `name` brought in by a `use` of this file?
    fn uses_name(&self, name: &str) -> bool {
        let mut in_use = false;
        for k in 0..self.toks.len() {
            if self.is_ident(k, "use") {
                in_use = true;
            } else if self.is(k, ";") {
                in_use = false;
            } else if in_use && self.is_ident(k, name) {
                return true;
            }
        }
        false
    }
}

/// What an argument that names a program turns out to be.
#[derive(Debug)]
enum Named {
    Program(String),
    /// One of the project's own binaries (`env!("CARGO_BIN_EXE_…")`).
    Own,
    /// A parameter of callable `.0` at position `.1`; `.2`: its first element names it.
    Param(usize, usize, bool),
    Unknown(String),
}

/// A helper that starts the program its parameter names: (file, callable, parameter, whether
/// the parameter is a list whose first element is the program).
type Wrapper = (usize, usize, usize, bool);

struct RScan<'a> {
    files: &'a [RFile],
    found: &'a mut Found,
}

/// Calls that make a program name out of a literal without changing it.
const ADAPTERS: &[&str] = &[
    "as_ref",
    "as_str",
    "as_os_str",
    "clone",
    "to_string",
    "to_owned",
    "into",
    "as_path",
];

impl RScan<'_> {
    fn text(f: &RFile, a: usize, b: usize) -> String {
        let mut s = String::new();
        for t in &f.toks[a..b.min(f.toks.len())] {
            match &t.t {
                RTok::Ident(x) | RTok::Num(x) | RTok::Punct(x) => s.push_str(x),
                RTok::Str(x) => s.push_str(&format!("{x:?}")),
                RTok::Lifetime => s.push_str("'_"),
            }
            s.push(' ');
        }
        s.trim_end().to_owned()
    }

    /// What the tokens [a, b) of file `fi` at call position `at` name as a program.
    fn classify(&self, fi: usize, at: usize, mut a: usize, mut b: usize, first: bool) -> Named {
        let f = &self.files[fi];
        while a < b && (f.is(a, "&") || f.is_ident(a, "mut")) {
            a += 1;
        }
        // Trailing `.as_ref()`, `.to_string()`…
        while b >= a + 4
            && f.is(b - 1, ")")
            && f.is(b - 2, "(")
            && f.ident(b - 3).is_some_and(|m| ADAPTERS.contains(&m))
            && f.is(b - 4, ".")
        {
            b -= 4;
        }
        if a >= b {
            return Named::Unknown("an empty argument".into());
        }
        let own = (a..b)
            .any(|k| matches!(&f.toks[k].t, RTok::Str(s) if s.starts_with("CARGO_BIN_EXE_")))
            && (a..b).any(|k| f.is_ident(k, "env"));
        if own {
            return Named::Own;
        }
        if first {
            // `&["prog", "arg"]`, `vec!["prog", …]`: the first element is the program.
            let open = if f.is(a, "[") {
                Some(a)
            } else if f.is_ident(a, "vec") && f.is(a + 1, "!") && f.is(a + 2, "[") {
                Some(a + 2)
            } else {
                None
            };
            if let Some(o) = open {
                return match f.split(o + 1, f.end_of(o), false).first() {
                    Some(&(s, e)) => self.classify(fi, at, s, e, false),
                    None => Named::Unknown("an empty list".into()),
                };
            }
        }
        if b == a + 1 {
            match &f.toks[a].t {
                RTok::Str(s) if !first => return Named::Program(s.clone()),
                RTok::Ident(x) => return self.resolve(fi, at, x, first),
                _ => {}
            }
        }
        if !first && b == a + 4 && f.is(a + 1, "[") && f.is(a + 3, "]") {
            if let (Some(x), RTok::Num(n)) = (f.ident(a), &f.toks[a + 2].t) {
                if n == "0" {
                    return self.resolve(fi, at, x, true);
                }
            }
        }
        // Path::new("…"), OsStr::new("…"), String::from("…"): a literal in a plain wrapper.
        if !first && b == a + 6 && f.is(a + 1, "::") && f.is(a + 3, "(") && f.is(a + 5, ")") {
            if let RTok::Str(s) = &f.toks[a + 4].t {
                if f.ident(a + 2).is_some_and(|m| ["new", "from"].contains(&m)) {
                    return Named::Program(s.clone());
                }
            }
        }
        Named::Unknown(format!("`{}`", Self::text(f, a, b)))
    }

    /// A name in an argument: a parameter of the function around it, a local
    /// `let x = "…"`, or a `const`/`static` of any source.
    fn resolve(&self, fi: usize, at: usize, x: &str, first: bool) -> Named {
        let f = &self.files[fi];
        for c in f.enclosing(at) {
            if let Some(p) = f.callables[c].params.iter().position(|p| p == x) {
                return Named::Param(c, p, first);
            }
        }
        // The nearest `let x = …;` before the use, in the same function.
        let from = f
            .enclosing(at)
            .first()
            .map_or(0, |&c| f.callables[c].body.0);
        for k in (from..at).rev() {
            if f.is_ident(k, "let") {
                let mut j = k + 1;
                if f.is_ident(j, "mut") {
                    j += 1;
                }
                if f.is_ident(j, x) {
                    let eq = (j..at).find(|&e| f.is(e, "=") || f.is(e, ";"));
                    if let Some(eq) = eq.filter(|&e| f.is(e, "=")) {
                        let end = self.statement_end(f, eq + 1);
                        // From the `let` on, so `let x = x;` looks further back.
                        return self.classify(fi, k, eq + 1, end, first);
                    }
                }
            }
        }
        for (gi, g) in self.files.iter().enumerate() {
            for k in 0..g.toks.len() {
                if (g.is_ident(k, "const") || g.is_ident(k, "static")) && g.is_ident(k + 1, x) {
                    if let Some(eq) = (k..g.toks.len()).find(|&e| g.is(e, "=")) {
                        let end = self.statement_end(g, eq + 1);
                        return self.classify(gi, eq, eq + 1, end, first);
                    }
                }
            }
        }
        Named::Unknown(format!(
            "`{x}`, which is not a literal, a const or a parameter"
        ))
    }

    fn statement_end(&self, f: &RFile, mut k: usize) -> usize {
        while k < f.toks.len() && !f.is(k, ";") {
            if f.is(k, "(") || f.is(k, "[") || f.is(k, "{") {
                k = f.end_of(k);
            }
            k += 1;
        }
        k
    }

    fn scan(&mut self) {
        let files = self.files;
        let mut wrappers: Vec<Wrapper> = Vec::new();
        for (fi, f) in files.iter().enumerate() {
            for k in 0..f.toks.len() {
                let is_new = f.is_ident(k, "Command")
                    && f.is(k + 1, "::")
                    && f.is_ident(k + 2, "new")
                    && f.is(k + 3, "(");
                if !is_new {
                    continue;
                }
                let qualified = k >= 2 && f.is(k - 1, "::");
                if qualified && !f.is_ident(k - 2, "process") {
                    continue;
                }
                if !qualified && !f.bare_command_is_process {
                    continue;
                }
                let line = f.toks[k].line;
                let close = f.end_of(k + 3);
                match self.classify(fi, k, k + 4, close, false) {
                    Named::Program(p) => {
                        self.found.program(&f.path, line, &p);
                        self.builder(fi, &p, close + 1, line);
                    }
                    Named::Own => {}
                    Named::Param(c, p, first) => wrappers.push((fi, c, p, first)),
                    Named::Unknown(what) => {
                        self.found
                            .unreadable(&f.path, line, format!("Command::new({what})"))
                    }
                }
            }
        }
        let mut done = HashSet::new();
        while let Some(w) = wrappers.pop() {
            if done.insert(w) {
                self.callers(w, &mut wrappers);
            }
        }
    }

    /// Every call of a helper whose parameter `p` names the program it starts.
    fn callers(&mut self, (di, c, p, first): Wrapper, more: &mut Vec<Wrapper>) {
        let files = self.files;
        let def = &files[di];
        let callable = &def.callables[c];
        // Helpers of the library and of the test kit's modules are called from other files.
        let shared = def.path.starts_with("src/")
            || (def.path.starts_with("tests/") && def.path.matches('/').count() > 1);
        for (fi, f) in files.iter().enumerate() {
            if fi != di && (callable.closure || !shared) {
                continue;
            }
            let (from, to) = if fi == di && callable.closure {
                callable.scope
            } else {
                (0, f.toks.len())
            };
            for k in from..to.min(f.toks.len()) {
                if !f.is_ident(k, &callable.name) || !f.is(k + 1, "(") || k == 0 {
                    continue;
                }
                let prev_dot = f.is(k - 1, ".");
                if f.is_ident(k - 1, "fn") || prev_dot != callable.method {
                    continue;
                }
                if callable.closure && f.is_ident(k.saturating_sub(1), "let") {
                    continue;
                }
                if !callable.method && !callable.closure {
                    let reachable = if f.is(k - 1, "::") {
                        k >= 2
                            && f.ident(k - 2).is_some_and(|q| {
                                q == def.module() || (fi == di && ["self", "Self"].contains(&q))
                            })
                    } else {
                        fi == di || f.uses_name(&callable.name)
                    };
                    if !reachable {
                        continue;
                    }
                }
                let args = f.split(k + 2, f.end_of(k + 1), false);
                if args.len() != callable.params.len() {
                    continue;
                }
                let (s, e) = args[p];
                let line = f.toks[s.min(f.toks.len() - 1)].line;
                match self.classify(fi, k, s, e, first) {
                    Named::Program(prog) => self.found.program(&f.path, line, &prog),
                    Named::Own => {}
                    Named::Param(c2, p2, first2) => more.push((fi, c2, p2, first2)),
                    Named::Unknown(what) => self.found.unreadable(
                        &f.path,
                        line,
                        format!("{}(…) starts the program named by {what}", callable.name),
                    ),
                }
            }
        }
    }

    /// The `.arg(…)`/`.args([…])` chain after `Command::new(program)`: what `sh -c` and
    /// runners such as `timeout` start.
    fn builder(&mut self, fi: usize, program: &str, mut k: usize, line: usize) {
        let files = self.files;
        let f = &files[fi];
        let base = program.rsplit('/').next().unwrap();
        let shell = ["sh", "bash", "dash"].contains(&base);
        let runs = runner(base);
        if !shell && runs.is_none() {
            return;
        }
        // Each argument: Some((text, line)) when it is a string we can read.
        let mut items: Vec<Option<(String, usize)>> = Vec::new();
        while f.is(k, ".") && f.ident(k + 1).is_some() && f.is(k + 2, "(") {
            let method = f.ident(k + 1).unwrap();
            let (a, b) = (k + 3, f.end_of(k + 2));
            if method == "arg" {
                items.push(self.string(fi, a, b));
            } else if method == "args" {
                let mut s = a;
                while f.is(s, "&") {
                    s += 1;
                }
                let open = if f.is(s, "[") {
                    Some(s)
                } else if f.is_ident(s, "vec") && f.is(s + 2, "[") {
                    Some(s + 2)
                } else {
                    None
                };
                match open {
                    Some(o) => {
                        for (x, y) in f.split(o + 1, f.end_of(o), false) {
                            items.push(self.string(fi, x, y));
                        }
                    }
                    None => items.push(None),
                }
            }
            k = b + 1;
        }
        let path = f.path.clone();
        if shell {
            let Some(c) = items
                .iter()
                .position(|i| i.as_ref().is_some_and(|(s, _)| s == "-c"))
            else {
                return;
            };
            match items.get(c + 1) {
                Some(Some((script, l))) => scan_shell(&path, script, *l, self.found),
                _ => self.found.unreadable(
                    &path,
                    line,
                    format!("{base} -c with a script that is not a literal or a const"),
                ),
            }
            return;
        }
        let (value_opts, mut operands) = runs.unwrap();
        let mut skip = false;
        for item in &items {
            let Some((s, l)) = item else {
                self.found.unreadable(
                    &path,
                    line,
                    format!("{base} runs a program named by an argument that is not a literal"),
                );
                return;
            };
            if skip {
                skip = false;
            } else if s.starts_with('-') {
                skip = value_opts.contains(&s.as_str());
            } else if is_assignment(s) {
            } else if operands > 0 {
                operands -= 1;
            } else {
                self.found.program(&path, *l, s);
                return;
            }
        }
    }

    /// A string argument: a literal, a const, or a `format!` whose template we read.
    fn string(&self, fi: usize, mut a: usize, b: usize) -> Option<(String, usize)> {
        let f = &self.files[fi];
        while a < b && f.is(a, "&") {
            a += 1;
        }
        if b == a + 1 {
            if let RTok::Str(s) = &f.toks[a].t {
                return Some((s.clone(), f.toks[a].line));
            }
            if let Some(x) = f.ident(a) {
                for g in self.files.iter() {
                    for k in 0..g.toks.len() {
                        if (g.is_ident(k, "const") || g.is_ident(k, "static"))
                            && g.is_ident(k + 1, x)
                        {
                            let eq = (k..g.toks.len()).find(|&e| g.is(e, "="))?;
                            if let RTok::Str(s) = &g.toks.get(eq + 1)?.t {
                                return Some((s.clone(), g.toks[eq + 1].line));
                            }
                        }
                    }
                }
            }
        }
        if f.is_ident(a, "format") && f.is(a + 1, "!") && f.is(a + 2, "(") {
            if let RTok::Str(s) = &f.toks.get(a + 3)?.t {
                return Some((s.clone(), f.toks[a + 3].line));
            }
        }
        None
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn is_shell_script(path: &Path) -> bool {
    if path.extension().is_some_and(|e| e == "sh") {
        return true;
    }
    let Ok(text) = fs::read_to_string(path) else {
        return false;
    };
    let first = text.lines().next().unwrap_or("");
    first.starts_with("#!") && ["sh", "bash", "dash"].iter().any(|s| first.ends_with(s))
}

/// Reads every source of the project for the programs it starts.
fn scan_repo() -> Found {
    let root = repo();
    let mut paths = Vec::new();
    for dir in ["src", "tests", "benches", "examples", "scripts", ".ci"] {
        walk(&root.join(dir), &mut paths);
    }
    paths.push(root.join("build.rs"));
    let rel = |p: &Path| {
        p.strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .into_owned()
    };
    let mut found = Found::default();
    let mut rust = Vec::new();
    for p in paths.iter().filter(|p| p.exists()) {
        if p.extension().is_some_and(|e| e == "rs") {
            rust.push(RFile::new(rel(p), &fs::read_to_string(p).unwrap()));
        } else if is_shell_script(p) {
            let text = fs::read_to_string(p).unwrap();
            let sourced = sourced_functions(&root, &text);
            scan_shell_in(&rel(p), &text, 1, &sourced, &mut found);
        }
    }
    RScan {
        files: &rust,
        found: &mut found,
    }
    .scan();
    found
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn every_program_the_sources_start_is_listed() {
    let listed = listed_programs(&read_list());
    let found = scan_repo();
    let programs = found.programs();
    // The readers themselves must work: these are started today, each in a different way.
    for known in [
        "mkfs.ext4",
        "xfs_growfs",
        "skopeo",
        "docker-registry",
        "python3",
        "dpkg-query",
    ] {
        assert!(
            programs.contains(known),
            "the scan no longer sees `{known}`: the source readers of this test are broken \
             (found: {programs:?})"
        );
    }
    let mut problems = Vec::new();
    for (file, line, program) in &found.uses {
        if !listed.contains_key(program) {
            problems.push(format!(
                "{file}:{line}: runs `{program}`, which {LIST} does not list: add it to {LIST} \
                 on the line of the Debian package that provides it (`dpkg -S bin/{program}`), \
                 so scripts/setup.sh installs it"
            ));
        }
    }
    for (file, line, why) in &found.unreadable {
        problems.push(format!(
            "{file}:{line}: starts a program this test cannot name ({why}): name the program \
             with a string literal or a const, directly or through a helper's parameter, and \
             list it in {LIST}"
        ));
    }
    problems.sort();
    problems.dedup();
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n"));
}

fn dpkg_query(args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("dpkg-query")
        .args(args)
        .output()
        .expect("run dpkg-query");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The files an installed package ships, by canonical path, so a usr-merged /bin/x and an
/// alternative such as awk still match.
fn package_files(package: &str) -> Option<HashSet<PathBuf>> {
    let list = dpkg_query(&["-L", package])?;
    Some(
        list.lines()
            .filter_map(|l| fs::canonicalize(l).ok())
            .filter(|p| p.is_file())
            .collect(),
    )
}

/// The packages an installed package depends on directly (the first of each alternative).
fn package_dependencies(package: &str) -> Vec<String> {
    let fields =
        dpkg_query(&["-W", "-f", "${Pre-Depends},${Depends}", package]).unwrap_or_default();
    fields
        .split(',')
        .filter_map(|d| d.split('|').next())
        .filter_map(|d| d.split_whitespace().next())
        .map(|d| d.split(':').next().unwrap().to_owned())
        .collect()
}

/// Runs after scripts/setup.sh (as scripts/test.sh does): every listed program is there, and
/// an apt one is the file its package ships, not a copy installed by hand that hides a
/// missing package.
#[test]
fn every_listed_program_is_installed() {
    let entries = read_list();
    let system_dirs = [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ];
    let path_dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    let mut problems = Vec::new();
    for e in &entries {
        if e.kind == "rust" {
            for prog in &e.programs {
                if !path_dirs.iter().any(|d| d.join(prog).is_file()) {
                    problems.push(format!(
                        "{LIST}:{}: `{prog}` is not on PATH: install a Rust toolchain with \
                         rustup (components rustfmt and clippy)",
                        e.line
                    ));
                }
            }
            continue;
        }
        let Some(files) = package_files(&e.package) else {
            problems.push(format!(
                "{LIST}:{}: package {} is not installed: run `bash scripts/setup.sh`",
                e.line, e.package
            ));
            continue;
        };
        let mut shipped = files;
        let mut with_dependencies = false;
        for prog in &e.programs {
            let candidates: Vec<PathBuf> = system_dirs
                .iter()
                .filter_map(|d| fs::canonicalize(Path::new(d).join(prog)).ok())
                .collect();
            if !with_dependencies && !candidates.iter().any(|p| shipped.contains(p)) {
                // Installing a package installs what it depends on: python3's program is
                // in python3-minimal.
                with_dependencies = true;
                for dep in package_dependencies(&e.package) {
                    shipped.extend(package_files(&dep).unwrap_or_default());
                }
            }
            let from_package = candidates.iter().any(|p| shipped.contains(p));
            if !from_package {
                problems.push(format!(
                    "{LIST}:{}: `{prog}` is not a program of package {} as installed here",
                    e.line, e.package
                ));
            }
        }
    }
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n"));
}

// The readers on small inputs: what they must see, and what they must not take for a program.

fn shell_programs(text: &str) -> Vec<(usize, String)> {
    let mut found = Found::default();
    scan_shell("t.sh", text, 1, &mut found);
    assert!(found.unreadable.is_empty(), "{:?}", found.unreadable);
    found.uses.into_iter().map(|(_, l, p)| (l, p)).collect()
}

#[test]
fn the_shell_reader_sees_every_command_and_nothing_else() {
    let script = r#"#!/usr/bin/env bash
set -euo pipefail
cd "$(dirname "$0")/.."
packages=(
  e2fsprogs   # mkfs.ext4 (the cache's) and what it's for
  curl jq
)
DEBIAN_FRONTEND=noninteractive apt-get install -y "${packages[@]}" >/dev/null 2>&1
helper() { sort -g | awk '{print $1}'; }
cat > "$work/config.yml" <<EOF
version: 0.1
storage: { filesystem: $(realpath "$work") }
EOF
cat <<'YAML' | tee x
not-a-command --at all
$(neither)
YAML
case "$1" in
  --check) check=1 ;;
  (--runs) runs="$2"; shift ;;
  *) echo "unknown $1" >&2; exit 2 ;;
esac
for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
{ grep " $work" /proc/self/mountinfo || true; } | cut -d' ' -f5 | while read -r m; do
  umount "$m" 2>/dev/null || umount -l "$m"
done
trap 'rm -rf --one-file-system "$work"' EXIT
read -r i rss < <(helper "$variant")
echo "$(( $(date +%s) - start )) s" "$(du -h "$out" | cut -f1)"
timeout 5 exec_me --flag
xargs -r -n1 losetup -d < list
"$bin/imagecached" --root x
[[ $(id -u) -ne 0 ]] && exit 1
if ! command -v debootstrap >/dev/null; then
  sh -c 'mkfs.xfs -q "$1"' sh img \
    && /usr/sbin/chroot "$root" /bin/true
fi
cargo fmt --check
python3 -c 'import socket; print(1)'
exec env FOO=1 nice -n 5 stress-me
"#;
    let got = shell_programs(script);
    let want = [
        (3, "dirname"),
        (8, "apt-get"),
        (9, "sort"),
        (9, "awk"),
        (10, "cat"),
        (12, "realpath"),
        (14, "cat"),
        (14, "tee"),
        (24, "grep"),
        (24, "cut"),
        (25, "umount"),
        (25, "umount"),
        (27, "rm"),
        (29, "date"),
        (29, "du"),
        (29, "cut"),
        (30, "timeout"),
        (30, "exec_me"),
        (31, "xargs"),
        (31, "losetup"),
        (33, "id"),
        (35, "sh"),
        (35, "mkfs.xfs"),
        (36, "chroot"),
        (38, "cargo"),
        (38, "cargo-fmt"),
        (39, "python3"),
        (40, "env"),
        (40, "nice"),
        (40, "stress-me"),
    ];
    let mut got_sorted = got.clone();
    got_sorted.sort();
    let mut want: Vec<(usize, String)> = want.iter().map(|(l, p)| (*l, p.to_string())).collect();
    want.sort();
    assert_eq!(got_sorted, want, "in order of finding: {got:?}");
}

fn rust_scan(files: &[(&str, &str)]) -> Found {
    let files: Vec<RFile> = files
        .iter()
        .map(|(p, s)| RFile::new(p.to_string(), s))
        .collect();
    let mut found = Found::default();
    RScan {
        files: &files,
        found: &mut found,
    }
    .scan();
    found
}

#[test]
fn the_rust_reader_follows_helpers_consts_and_shells() {
    let tool = r##"
use std::process::{Command, Output};
/// Command::new("not-in-a-comment")
pub(crate) fn run(tool: &'static str, args: &[&str], path: &Path) -> Output {
    Command::new(tool).args(args).arg(path).output().unwrap()
}
pub(super) fn run_ok(tool: &'static str, args: &[&str], path: &Path) -> Result<()> {
    let _ = "Command::new(\"in-a-string\")";
    check(run(tool, args, path))
}
"##;
    let user = r##"
use super::tool;
fn make(path: &Path) {
    tool::run_ok("mkfs.ext4", &["-q"], path)?;
    let out = tool::run("e2fsck", &["-n"], path);
    let other = run("not-a-program", 3);
}
"##;
    let test = r##"
use std::process::Command;
const SUPERVISOR: &str = r#"
docker-registry serve "$1" >>"$2" 2>&1 &
while read -r _; do :; done
"#;
const PROG: &str = "htpasswd";
fn all(argv: &[&str]) {
    let st = std::process::Command::new(argv[0]).args(&argv[1..]).status();
}
#[test]
fn t() {
    let child = Command::new(env!("CARGO_BIN_EXE_imagecached")).spawn();
    let sup = Command::new("sh").arg("-c").arg(SUPERVISOR).arg("x").spawn();
    let h = Command::new(PROG).output();
    let run = |cmd: &str, args: &[&OsStr]| {
        let st = std::process::Command::new(cmd).args(args).status().unwrap();
    };
    run("mount", &["-o".as_ref()]);
    all(&["skopeo", "copy"]);
    let t = Command::new("timeout").args(["-s", "KILL", "5", "umoci", "unpack"]).status();
    let inside = Command::new("chroot").arg(&root).args(["/bin/sh", "-c", "true"]).output();
    let lit = "filefrag";
    let f = Command::new(lit).output();
    let weird = Command::new(pick_one()).output();
}
"##;
    let clap = r##"
use clap::Command;
fn cli() -> Command { Command::new("imagecache") }
"##;
    let found = rust_scan(&[
        ("src/image/tool.rs", tool),
        ("src/image/create.rs", user),
        ("tests/t.rs", test),
        ("src/cli/mod.rs", clap),
    ]);
    let mut got: Vec<(String, usize, String)> = found.uses.clone();
    got.sort();
    let want = [
        ("src/image/create.rs", 4, "mkfs.ext4"),
        ("src/image/create.rs", 5, "e2fsck"),
        ("tests/t.rs", 4, "docker-registry"),
        ("tests/t.rs", 14, "sh"),
        ("tests/t.rs", 15, "htpasswd"),
        ("tests/t.rs", 19, "mount"),
        ("tests/t.rs", 20, "skopeo"),
        ("tests/t.rs", 21, "timeout"),
        ("tests/t.rs", 21, "umoci"),
        ("tests/t.rs", 22, "chroot"),
        ("tests/t.rs", 24, "filefrag"),
    ];
    let mut want: Vec<(String, usize, String)> = want
        .iter()
        .map(|(f, l, p)| (f.to_string(), *l, p.to_string()))
        .collect();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(found.unreadable.len(), 1, "{:?}", found.unreadable);
    assert_eq!(found.unreadable[0].1, 25);
}
