//! A recursive-descent evaluator for arithmetic expressions.
//!
//! Grammar, loosest binding first: `sum = product (("+" | "-") product)*`,
//! `product = unary (("*" | "/" | "%") unary)*`, `unary = "-" unary | power`,
//! `power = atom ("^" unary)?` (right associative, binding tighter than unary minus, so
//! `-2 ^ 2` is -4), `atom = number | name | name "(" sum ")" | "(" sum ")"`.

/// Maximum nesting of parentheses and unary operators, so a hostile expression cannot
/// overflow the stack of the daemon's calling thread.
const MAX_DEPTH: usize = 200;

/// Evaluates `text`, or returns a message naming the position of the first problem.
pub fn evaluate(text: &str) -> Result<f64, String> {
    let mut parser = Parser {
        chars: text.char_indices().collect(),
        position: 0,
        depth: 0,
    };
    let value = parser.sum()?;
    parser.skip_spaces();
    match parser.peek() {
        None => Ok(value),
        Some(c) => Err(parser.error(&format!("unexpected {c:?}"))),
    }
}

struct Parser {
    chars: Vec<(usize, char)>,
    position: usize,
    depth: usize,
}

impl Parser {
    fn sum(&mut self) -> Result<f64, String> {
        let mut value = self.product()?;
        while let Some(operator) = self.next_operator(&['+', '-']) {
            let right = self.product()?;
            value = if operator == '+' {
                value + right
            } else {
                value - right
            };
        }
        Ok(value)
    }

    fn product(&mut self) -> Result<f64, String> {
        let mut value = self.unary()?;
        while let Some(operator) = self.next_operator(&['*', '/', '%']) {
            let right = self.unary()?;
            value = match operator {
                '*' => value * right,
                '/' => value / right,
                _ => value % right,
            };
        }
        Ok(value)
    }

    fn unary(&mut self) -> Result<f64, String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error("the expression is nested too deeply"));
        }
        let value = if self.next_operator(&['-']).is_some() {
            self.unary().map(|value| -value)
        } else {
            self.power()
        };
        self.depth -= 1;
        value
    }

    fn power(&mut self) -> Result<f64, String> {
        let base = self.atom()?;
        if self.next_operator(&['^']).is_some() {
            let exponent = self.unary()?;
            return Ok(base.powf(exponent));
        }
        Ok(base)
    }

    fn atom(&mut self) -> Result<f64, String> {
        self.skip_spaces();
        match self.peek() {
            Some('(') => {
                self.position += 1;
                let value = self.sum()?;
                self.expect(')')?;
                Ok(value)
            }
            Some(c) if c.is_ascii_digit() || c == '.' => self.number(),
            Some(c) if c.is_ascii_alphabetic() => self.name(),
            Some(c) => Err(self.error(&format!("unexpected {c:?}"))),
            None => Err(self.error("the expression ends where a number was expected")),
        }
    }

    fn number(&mut self) -> Result<f64, String> {
        let start = self.position;
        let mut previous = ' ';
        while let Some(c) = self.peek() {
            let exponent_sign = (c == '+' || c == '-') && (previous == 'e' || previous == 'E');
            if !(c.is_ascii_digit() || c == '.' || c == 'e' || c == 'E' || exponent_sign) {
                break;
            }
            previous = c;
            self.position += 1;
        }
        let text: String = self.chars[start..self.position]
            .iter()
            .map(|(_, c)| c)
            .collect();
        text.parse()
            .map_err(|_| self.error(&format!("invalid number {text:?}")))
    }

    fn name(&mut self) -> Result<f64, String> {
        let start = self.position;
        while self.peek().is_some_and(|c| c.is_ascii_alphanumeric()) {
            self.position += 1;
        }
        let name: String = self.chars[start..self.position]
            .iter()
            .map(|(_, c)| c)
            .collect();
        match name.as_str() {
            "pi" => return Ok(std::f64::consts::PI),
            "e" => return Ok(std::f64::consts::E),
            _ => {}
        }
        let function: fn(f64) -> f64 = match name.as_str() {
            "sqrt" => f64::sqrt,
            "abs" => f64::abs,
            "ln" => f64::ln,
            "log10" => f64::log10,
            "exp" => f64::exp,
            "sin" => f64::sin,
            "cos" => f64::cos,
            "tan" => f64::tan,
            "floor" => f64::floor,
            "ceil" => f64::ceil,
            "round" => f64::round,
            _ => return Err(self.error(&format!("unknown name {name:?}"))),
        };
        self.expect('(')?;
        let argument = self.sum()?;
        self.expect(')')?;
        Ok(function(argument))
    }

    fn next_operator(&mut self, operators: &[char]) -> Option<char> {
        self.skip_spaces();
        let c = self.peek().filter(|c| operators.contains(c))?;
        self.position += 1;
        Some(c)
    }

    fn expect(&mut self, wanted: char) -> Result<(), String> {
        self.skip_spaces();
        if self.peek() == Some(wanted) {
            self.position += 1;
            Ok(())
        } else {
            Err(self.error(&format!("expected {wanted:?}")))
        }
    }

    fn skip_spaces(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.position += 1;
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.position).map(|(_, c)| *c)
    }

    fn error(&self, message: &str) -> String {
        let offset = self.chars.get(self.position).map_or_else(
            || self.chars.last().map_or(0, |(i, c)| i + c.len_utf8()),
            |(i, _)| *i,
        );
        format!("{message} at byte {offset} of the expression")
    }
}
