//! The committed state diagrams (`docs/state-diagram.{dot,mmd,svg}` and the
//! Mermaid block embedded in `docs/spec.md`) must match what
//! `redial::unstable::table` generates from the transition table the machine
//! itself checks every transition against.
//!
//! Regenerate everything with:
//!
//! ```text
//! REDIAL_BLESS=1 cargo test --test engine diagram::
//! ```
//!
//! Blessing rewrites the `.dot`, the `.mmd` and the spec's Mermaid block, and
//! re-renders the `.svg` when Graphviz's `dot` is on the `PATH`. Without
//! blessing the test compares text only (CI has no Graphviz).

use std::path::{Path, PathBuf};

use redial::unstable::table::{self, EDGES};

const REGENERATE: &str = "REDIAL_BLESS=1 cargo test --test engine diagram::";
const SPEC_BEGIN: &str = "<!-- BEGIN GENERATED state-diagram: table::mermaid() -->";
const SPEC_END: &str = "<!-- END GENERATED state-diagram -->";

fn docs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docs")
}

fn blessing() -> bool {
    std::env::var_os("REDIAL_BLESS").is_some_and(|v| !v.is_empty() && v != "0")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}; regenerate with `{REGENERATE}`",
            path.display()
        )
    })
}

/// Compares `path` with `expected`, or rewrites it when blessing.
fn check_file(path: &Path, expected: &str) {
    if blessing() {
        std::fs::write(path, expected)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        return;
    }
    let committed = read(path);
    assert!(
        committed == expected,
        "{} is out of date with the transition table (src/machine/table.rs).\n\
         Regenerate it with:\n\n    {REGENERATE}\n\n{}",
        path.display(),
        first_difference(&committed, expected)
    );
}

fn first_difference(committed: &str, expected: &str) -> String {
    let mut c = committed.lines();
    let mut e = expected.lines();
    for line in 1.. {
        match (c.next(), e.next()) {
            (None, None) => return "the files differ only in line endings".into(),
            (a, b) if a == b => continue,
            (a, b) => {
                return format!(
                    "first difference at line {line}:\n  committed: {}\n  generated: {}",
                    a.unwrap_or("<end of file>"),
                    b.unwrap_or("<end of file>")
                );
            }
        }
    }
    unreachable!()
}

/// The spec's embedded block: the Mermaid source inside a fenced block
/// between the two markers.
fn spec_block() -> String {
    format!(
        "{SPEC_BEGIN}\n```mermaid\n{}```\n{SPEC_END}",
        table::mermaid()
    )
}

#[test]
fn dot_file_is_current() {
    check_file(&docs().join("state-diagram.dot"), &table::dot());
}

#[test]
fn mermaid_file_is_current() {
    check_file(&docs().join("state-diagram.mmd"), &table::mermaid());
}

#[test]
fn spec_embeds_the_current_mermaid_diagram() {
    let path = docs().join("spec.md");
    let spec = read(&path);
    let (Some(begin), Some(end)) = (spec.find(SPEC_BEGIN), spec.find(SPEC_END)) else {
        panic!(
            "{} must contain the markers\n{SPEC_BEGIN}\n...\n{SPEC_END}",
            path.display()
        );
    };
    assert!(
        begin < end,
        "{}: the END marker comes before the BEGIN marker",
        path.display()
    );
    let current = &spec[begin..end + SPEC_END.len()];
    let expected = spec_block();
    if blessing() {
        let updated = format!(
            "{}{expected}{}",
            &spec[..begin],
            &spec[end + SPEC_END.len()..]
        );
        std::fs::write(&path, updated)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        return;
    }
    assert!(
        current == expected,
        "the Mermaid diagram embedded in {} is out of date.\nRegenerate it with:\n\n    {REGENERATE}\n\n{}",
        path.display(),
        first_difference(current, &expected)
    );
}

/// Text-only check of the rendered SVG: one arrow per (from, to) pair of the
/// table (plus the entry and exit arrows), each present. When blessing, the
/// SVG is re-rendered first if Graphviz is installed.
#[test]
fn svg_has_every_edge() {
    let svg_path = docs().join("state-diagram.svg");
    if blessing() {
        // Rendered from memory: `dot_file_is_current` may be rewriting the .dot.
        render_svg(&svg_path);
    }
    let svg = read(&svg_path);
    let mut pairs: Vec<(&str, &str)> = EDGES
        .iter()
        .map(|e| (e.from.as_str(), e.to.as_str()))
        .collect();
    pairs.sort_unstable();
    pairs.dedup();
    let rerender = format!(
        "re-render it with `{REGENERATE}` (needs Graphviz) or \
         `dot -Tsvg docs/state-diagram.dot -o docs/state-diagram.svg`"
    );
    let arrows = svg.matches("class=\"edge\"").count();
    assert_eq!(
        arrows,
        pairs.len() + 2,
        "{} has {arrows} arrows but the transition table has {} state pairs (+2 for entry and exit); {rerender}",
        svg_path.display(),
        pairs.len()
    );
    for (from, to) in pairs {
        // Graphviz writes an edge's title as `from&#45;&gt;to`.
        let title = format!("<title>{from}&#45;&gt;{to}</title>");
        assert!(
            svg.contains(&title),
            "{} lacks the arrow {from} -> {to}; {rerender}",
            svg_path.display()
        );
    }
    for edge in EDGES {
        let reason = format!(">{}</text>", table::reason_name(edge.reason));
        assert!(
            svg.contains(&reason),
            "{} lacks the label {}; {rerender}",
            svg_path.display(),
            table::reason_name(edge.reason)
        );
    }
}

fn render_svg(svg_path: &Path) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let child = Command::new("dot")
        .arg("-Tsvg")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        eprintln!(
            "Graphviz `dot` not found: {} was not re-rendered \
             (run `dot -Tsvg docs/state-diagram.dot -o docs/state-diagram.svg`)",
            svg_path.display()
        );
        return;
    };
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(table::dot().as_bytes())
        .expect("write to dot");
    let output = child.wait_with_output().expect("run dot");
    assert!(
        output.status.success(),
        "dot failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::write(svg_path, output.stdout)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", svg_path.display()));
}
