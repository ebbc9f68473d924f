//! The Prometheus text exposition format, as far as the mediator uses it.
//!
//! Enough for `SHOW_METRICS` with param1 = 1: comment lines, `name value`, and
//! `name{label="value",…} value` with an optional timestamp. Label values may hold the
//! format's escapes (`\\`, `\"`, `\n`). Values are Go floats, so `NaN`, `+Inf` and `-Inf` occur.

use std::iter::Peekable;
use std::str::CharIndices;

/// One line of metrics: `vgpu_vm_jobs_total{vm_id="7"} 42`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    /// In the order the line gives them.
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// The value of label `key`, if the sample has it.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The samples of `text`, in order. `# HELP`, `# TYPE` and other comment lines and blank lines
/// are skipped, and so is any line that is not a well-formed sample: a mediator that prints
/// something new must not hide the metrics around it.
pub fn parse_prometheus(text: &str) -> Vec<Sample> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(parse_line)
        .collect()
}

struct Cursor<'a> {
    line: &'a str,
    chars: Peekable<CharIndices<'a>>,
}

impl<'a> Cursor<'a> {
    fn new(line: &'a str) -> Self {
        Cursor {
            line,
            chars: line.char_indices().peekable(),
        }
    }

    fn peek(&mut self) -> Option<char> {
        self.chars.peek().map(|&(_, c)| c)
    }

    fn eat(&mut self, wanted: char) -> bool {
        if self.peek() == Some(wanted) {
            self.chars.next();
            true
        } else {
            false
        }
    }

    fn skip_blanks(&mut self) -> bool {
        let mut skipped = false;
        while matches!(self.peek(), Some(' ' | '\t')) {
            self.chars.next();
            skipped = true;
        }
        skipped
    }

    fn offset(&mut self) -> usize {
        self.chars.peek().map_or(self.line.len(), |&(i, _)| i)
    }

    /// A run of characters the first of which satisfies `first` and the rest `rest`.
    fn identifier(&mut self, first: fn(char) -> bool, rest: fn(char) -> bool) -> Option<&'a str> {
        let start = self.offset();
        if !self.peek().is_some_and(first) {
            return None;
        }
        self.chars.next();
        while self.peek().is_some_and(rest) {
            self.chars.next();
        }
        Some(&self.line[start..self.offset()])
    }

    /// Characters up to the next blank or the end.
    fn word(&mut self) -> &'a str {
        let start = self.offset();
        while self.peek().is_some_and(|c| c != ' ' && c != '\t') {
            self.chars.next();
        }
        &self.line[start..self.offset()]
    }

    /// A double-quoted label value, after its opening quote, with its escapes undone.
    fn quoted_rest(&mut self) -> Option<String> {
        let mut value = String::new();
        loop {
            match self.chars.next()?.1 {
                '"' => return Some(value),
                '\\' => match self.chars.next()?.1 {
                    'n' => value.push('\n'),
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    // Not one of the format's escapes: kept as written.
                    other => {
                        value.push('\\');
                        value.push(other);
                    }
                },
                c => value.push(c),
            }
        }
    }
}

fn metric_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn metric_rest(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

fn label_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn label_rest(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn parse_line(line: &str) -> Option<Sample> {
    let mut cursor = Cursor::new(line);
    let name = cursor.identifier(metric_start, metric_rest)?.to_string();
    cursor.skip_blanks();
    let mut labels = Vec::new();
    if cursor.eat('{') {
        loop {
            cursor.skip_blanks();
            if cursor.eat('}') {
                break;
            }
            let key = cursor.identifier(label_start, label_rest)?.to_string();
            cursor.skip_blanks();
            if !cursor.eat('=') {
                return None;
            }
            cursor.skip_blanks();
            if !cursor.eat('"') {
                return None;
            }
            labels.push((key, cursor.quoted_rest()?));
            cursor.skip_blanks();
            if cursor.eat('}') {
                break;
            }
            if !cursor.eat(',') {
                return None;
            }
        }
        cursor.skip_blanks();
    }
    let value = parse_value(cursor.word())?;
    if cursor.skip_blanks() {
        let timestamp = cursor.word();
        if !timestamp.is_empty() && timestamp.parse::<i64>().is_err() {
            return None;
        }
        cursor.skip_blanks();
    }
    if cursor.peek().is_some() {
        return None;
    }
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// A Go float as Prometheus prints it: decimal or exponent notation, `NaN`, `+Inf`, `-Inf`.
fn parse_value(word: &str) -> Option<f64> {
    match word {
        "" => None,
        "NaN" => Some(f64::NAN),
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        // Rust's parser also takes `inf`, `infinity` and `nan` in any case, which Go's does too;
        // it refuses hexadecimal and digit separators, as Prometheus does.
        _ => word.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(name: &str, labels: &[(&str, &str)], value: f64) -> Sample {
        Sample {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            value,
        }
    }

    /// The metrics MEDIATOR.md lists, laid out the way Prometheus exporters print them.
    const MEDIATOR_TEXT: &str = "\
# HELP vgpu_jobs_total Total GPU jobs processed
# TYPE vgpu_jobs_total counter
vgpu_jobs_total 1234
# HELP vgpu_errors_total Total GPU job errors
# TYPE vgpu_errors_total counter
vgpu_errors_total 5
# HELP vgpu_rejected_total Jobs rejected (rate limit, queue depth, quarantine)
# TYPE vgpu_rejected_total counter
vgpu_rejected_total 17
# HELP vgpu_context_switches_total GPU context switches
# TYPE vgpu_context_switches_total counter
vgpu_context_switches_total 99
# HELP vgpu_gpu_resets_total GPU resets
# TYPE vgpu_gpu_resets_total counter
vgpu_gpu_resets_total 0
# HELP vgpu_vm_jobs_total Jobs per VM
# TYPE vgpu_vm_jobs_total counter
vgpu_vm_jobs_total{vm_id=\"1\"} 1000
vgpu_vm_jobs_total{vm_id=\"7\"} 234
# HELP vgpu_vm_latency_p95_us 95th percentile latency per VM (microseconds)
# TYPE vgpu_vm_latency_p95_us gauge
vgpu_vm_latency_p95_us{vm_id=\"1\"} 812.5
vgpu_vm_latency_p95_us{vm_id=\"7\"} 0
# HELP vgpu_vm_latency_p99_us 99th percentile latency per VM (microseconds)
# TYPE vgpu_vm_latency_p99_us gauge
vgpu_vm_latency_p99_us{vm_id=\"1\"} 1.5e3
vgpu_vm_latency_p99_us{vm_id=\"7\"} NaN
";

    #[test]
    fn the_mediators_metrics() {
        let samples = parse_prometheus(MEDIATOR_TEXT);
        let expected = [
            sample("vgpu_jobs_total", &[], 1234.0),
            sample("vgpu_errors_total", &[], 5.0),
            sample("vgpu_rejected_total", &[], 17.0),
            sample("vgpu_context_switches_total", &[], 99.0),
            sample("vgpu_gpu_resets_total", &[], 0.0),
            sample("vgpu_vm_jobs_total", &[("vm_id", "1")], 1000.0),
            sample("vgpu_vm_jobs_total", &[("vm_id", "7")], 234.0),
            sample("vgpu_vm_latency_p95_us", &[("vm_id", "1")], 812.5),
            sample("vgpu_vm_latency_p95_us", &[("vm_id", "7")], 0.0),
            sample("vgpu_vm_latency_p99_us", &[("vm_id", "1")], 1500.0),
        ];
        assert_eq!(samples.len(), expected.len() + 1);
        assert_eq!(samples[..expected.len()], expected);
        let last = &samples[expected.len()];
        assert_eq!(last.name, "vgpu_vm_latency_p99_us");
        assert_eq!(last.label("vm_id"), Some("7"));
        assert!(last.value.is_nan());
    }

    #[test]
    fn several_labels_escapes_and_blanks() {
        let text = concat!(
            "m{a=\"x\",b=\"say \\\"hi\\\"\"} 1\n",
            "m{ path = \"C:\\\\dir\" , line=\"one\\ntwo\" , } 2\n",
            "m{odd=\"\\t stays\"} 3\n",
            "m{} 4\n",
            "  m{a=\"}{,\"}\t5  \n",
        );
        assert_eq!(
            parse_prometheus(text),
            vec![
                sample("m", &[("a", "x"), ("b", "say \"hi\"")], 1.0),
                sample("m", &[("path", "C:\\dir"), ("line", "one\ntwo")], 2.0),
                sample("m", &[("odd", "\\t stays")], 3.0),
                sample("m", &[], 4.0),
                sample("m", &[("a", "}{,")], 5.0),
            ]
        );
        let first = &parse_prometheus(text)[0];
        assert_eq!(first.label("b"), Some("say \"hi\""));
        assert_eq!(first.label("c"), None);
    }

    #[test]
    fn special_values_and_timestamps() {
        let samples = parse_prometheus(
            "a +Inf\nb -Inf\nc Inf\nd -0.5\ne 1e-3\nf 42 1700000000000\ng 7 -5\nh:sub_total 3\n",
        );
        let values: Vec<(&str, f64)> = samples.iter().map(|s| (s.name.as_str(), s.value)).collect();
        assert_eq!(
            values,
            [
                ("a", f64::INFINITY),
                ("b", f64::NEG_INFINITY),
                ("c", f64::INFINITY),
                ("d", -0.5),
                ("e", 0.001),
                ("f", 42.0),
                ("g", 7.0),
                ("h:sub_total", 3.0),
            ]
        );
    }

    #[test]
    fn lines_that_do_not_parse_are_skipped() {
        let text = "\
# TYPE ok counter
ok 1
=== vGPU Mediator Metrics ===
Uptime: 12 s
no_value
no_value{a=\"b\"}
bad{a=\"unterminated} 1
bad{a=b} 1
bad{=\"x\"} 1
bad{a=\"x\" b=\"y\"} 1
bad{a=\"x\"
bad 0x10
bad 1_000
bad 1 2 3
bad 1 notatime
9bad 1
bad-name 1
bad 12abc

also_ok{vm_id=\"3\"} 2
";
        assert_eq!(
            parse_prometheus(text),
            vec![
                sample("ok", &[], 1.0),
                sample("also_ok", &[("vm_id", "3")], 2.0)
            ]
        );
    }

    #[test]
    fn nothing_to_parse() {
        assert!(parse_prometheus("").is_empty());
        assert!(parse_prometheus("# HELP x y\n# TYPE x counter\n\n").is_empty());
        assert!(parse_prometheus("ERROR: Unknown admin command 0x10").is_empty());
    }

    proptest! {
        #[test]
        fn parsing_never_panics(text in "(?s).{0,300}") {
            let _ = parse_prometheus(&text);
        }

        #[test]
        fn printed_samples_parse_back(
            name in "[a-zA-Z_:][a-zA-Z0-9_:]{0,20}",
            labels in proptest::collection::vec(("[a-zA-Z_][a-zA-Z0-9_]{0,10}", "[ -~\n]{0,12}"), 0..4),
            value in -1e12f64..1e12,
        ) {
            let printed: Vec<String> = labels
                .iter()
                .map(|(k, v)| {
                    let escaped = v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
                    format!("{k}=\"{escaped}\"")
                })
                .collect();
            let line = if labels.is_empty() {
                format!("{name} {value}")
            } else {
                format!("{name}{{{}}} {value}", printed.join(","))
            };
            let parsed = parse_prometheus(&line);
            prop_assert_eq!(parsed, vec![Sample { name, labels, value }]);
        }
    }
}
