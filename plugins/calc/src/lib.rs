//! A goose-api plugin for exact-enough arithmetic, which language models get wrong: it
//! evaluates expressions and summarizes lists of numbers.

mod expression;

use goose_plugin::export_plugin;

/// Arguments of `evaluate`.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct EvaluateInput {
    /// Arithmetic expression with numbers, `+ - * / % ^`, parentheses, the constants `pi`
    /// and `e`, and the functions `sqrt`, `abs`, `ln`, `log10`, `exp`, `sin`, `cos`, `tan`,
    /// `floor`, `ceil` and `round`. Example: `(2 + 3) * sqrt(16) ^ 2`.
    pub expression: String,
}

/// Evaluates an arithmetic expression in 64-bit floating point.
pub fn evaluate(input: EvaluateInput) -> Result<String, String> {
    let value = expression::evaluate(&input.expression)?;
    if value.is_finite() {
        Ok(format_number(value))
    } else {
        Err(format!(
            "the expression {:?} has no finite value (division by zero or overflow)",
            input.expression
        ))
    }
}

/// Arguments of `summarize`.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct SummarizeInput {
    /// The numbers to summarize; at least one.
    pub numbers: Vec<f64>,
}

/// Returns count, sum, minimum, maximum, mean, median and the population standard
/// deviation of a list of numbers, as a JSON object.
pub fn summarize(input: SummarizeInput) -> Result<serde_json::Value, String> {
    let mut numbers = input.numbers;
    if numbers.is_empty() {
        return Err("numbers is empty; pass at least one number".to_owned());
    }
    numbers.sort_by(f64::total_cmp);
    let count = numbers.len() as f64;
    let sum: f64 = numbers.iter().sum();
    let mean = sum / count;
    let middle = numbers.len() / 2;
    let median = if numbers.len().is_multiple_of(2) {
        (numbers[middle - 1] + numbers[middle]) / 2.0
    } else {
        numbers[middle]
    };
    let variance = numbers.iter().map(|n| (n - mean).powi(2)).sum::<f64>() / count;
    Ok(serde_json::json!({
        "count": numbers.len(),
        "sum": sum,
        "min": numbers[0],
        "max": numbers[numbers.len() - 1],
        "mean": mean,
        "median": median,
        "std_dev": variance.sqrt(),
    }))
}

/// Prints integers without a fractional part and other values with Rust's shortest
/// representation that reads back exactly.
fn format_number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{value:.0}")
    } else {
        format!("{value}")
    }
}

export_plugin! {
    name: "calc",
    version: env!("CARGO_PKG_VERSION"),
    tools: [
        evaluate: "Evaluates an arithmetic expression and returns its value; use it instead \
                   of doing arithmetic in your head",
        summarize: "Returns count, sum, min, max, mean, median and standard deviation of a \
                    list of numbers",
    ],
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(text: &str) -> Result<String, String> {
        evaluate(EvaluateInput {
            expression: text.to_owned(),
        })
    }

    #[test]
    fn evaluate_follows_precedence() {
        assert_eq!(eval("1 + 2 * 3"), Ok("7".to_owned()));
        assert_eq!(eval("(1 + 2) * 3"), Ok("9".to_owned()));
        assert_eq!(eval("2 ^ 3 ^ 2"), Ok("512".to_owned()));
        assert_eq!(eval("-2 ^ 2"), Ok("-4".to_owned()));
        assert_eq!(eval("10 % 4 + sqrt(16)"), Ok("6".to_owned()));
        assert_eq!(eval("1 / 4"), Ok("0.25".to_owned()));
        assert_eq!(eval("1.5e3"), Ok("1500".to_owned()));
    }

    #[test]
    fn evaluate_rejects_bad_input() {
        assert!(eval("1 / 0").is_err());
        assert!(eval("1 +").is_err());
        assert!(eval("foo(1)").is_err());
        assert!(eval("(1").is_err());
        assert!(eval("1 2").is_err());
    }

    #[test]
    fn summarize_computes_median_of_even_count() {
        let summary = summarize(SummarizeInput {
            numbers: vec![4.0, 1.0, 3.0, 2.0],
        });
        let summary = summary.unwrap_or_default();
        assert_eq!(summary["median"], 2.5);
        assert_eq!(summary["sum"], 10.0);
    }
}
