//! The result tables of `xtask bench`: a figure over several runs as its median and range, as
//! aligned plain text and as markdown.

/// Median and range of a figure over runs, `None` when no run has it.
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

fn spread(values: impl IntoIterator<Item = Option<f64>>) -> Option<Spread> {
    let mut v: Vec<f64> = values.into_iter().flatten().collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    let median = if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    };
    Some(Spread {
        median,
        min: v[0],
        max: v[v.len() - 1],
    })
}

/// `median (min–max)`, or the value alone when the runs agree or there was one.
pub fn cell(values: impl IntoIterator<Item = Option<f64>>, decimals: usize) -> String {
    match spread(values) {
        None => "-".into(),
        Some(s) => {
            let f = |x: f64| format!("{x:.decimals$}");
            if f(s.min) == f(s.max) {
                f(s.median)
            } else {
                format!("{} ({}–{})", f(s.median), f(s.min), f(s.max))
            }
        }
    }
}

pub fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let width = |i: usize| {
        rows.iter()
            .map(|r| r[i].chars().count())
            .chain([headers[i].chars().count()])
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..headers.len()).map(width).collect();
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, &w))| {
                if i == 0 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        println!("{}", padded.join("  "));
    };
    line(headers.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

pub fn print_markdown(headers: &[&str], rows: &[Vec<String>]) {
    println!("| {} |", headers.join(" | "));
    let align: Vec<&str> = (0..headers.len())
        .map(|i| if i == 0 { "---" } else { "---:" })
        .collect();
    println!("|{}|", align.join("|"));
    for r in rows {
        println!("| {} |", r.join(" | "));
    }
}

#[cfg(test)]
mod tests {
    use super::cell;

    #[test]
    fn median_and_range() {
        assert_eq!(cell([Some(3.0), Some(1.0), Some(2.0)], 1), "2.0 (1.0–3.0)");
        assert_eq!(cell([Some(1.0), Some(5.0)], 0), "3 (1–5)");
        assert_eq!(cell([Some(2.04), Some(2.01)], 1), "2.0");
        assert_eq!(cell([None, Some(5.0)], 0), "5");
        assert_eq!(cell([None], 0), "-");
    }
}
