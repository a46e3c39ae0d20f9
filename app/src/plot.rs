//! Figures drawn by the project's own code (BENCHMARKS.md's plots, the solver lab's grid):
//! a small log-log line plot and a canvas for pictures and labels, with a built-in 5x7 font.

use latent_engine::protocol::ImageRgb8;

/// One line of a plot.
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

const W: usize = 900;
const H: usize = 620;
const LEFT: usize = 70;
const RIGHT: usize = 210;
const TOP: usize = 30;
const BOTTOM: usize = 50;

const PALETTE: [[u8; 3]; 12] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
    [0, 0, 0],
    [255, 187, 120],
];

fn glyph(c: char) -> [u8; 7] {
    match c {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        'a' => [0x00, 0x00, 0x0E, 0x01, 0x0F, 0x11, 0x0F],
        'b' => [0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x1E],
        'c' => [0x00, 0x00, 0x0E, 0x10, 0x10, 0x11, 0x0E],
        'd' => [0x01, 0x01, 0x0D, 0x13, 0x11, 0x11, 0x0F],
        'e' => [0x00, 0x00, 0x0E, 0x11, 0x1F, 0x10, 0x0E],
        'f' => [0x06, 0x09, 0x08, 0x1C, 0x08, 0x08, 0x08],
        'g' => [0x00, 0x0F, 0x11, 0x11, 0x0F, 0x01, 0x0E],
        'h' => [0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x11],
        'i' => [0x04, 0x00, 0x0C, 0x04, 0x04, 0x04, 0x0E],
        'j' => [0x02, 0x00, 0x06, 0x02, 0x02, 0x12, 0x0C],
        'k' => [0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12],
        'l' => [0x0C, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'm' => [0x00, 0x00, 0x1A, 0x15, 0x15, 0x11, 0x11],
        'n' => [0x00, 0x00, 0x16, 0x19, 0x11, 0x11, 0x11],
        'o' => [0x00, 0x00, 0x0E, 0x11, 0x11, 0x11, 0x0E],
        'p' => [0x00, 0x00, 0x1E, 0x11, 0x1E, 0x10, 0x10],
        'q' => [0x00, 0x00, 0x0D, 0x13, 0x0F, 0x01, 0x01],
        'r' => [0x00, 0x00, 0x16, 0x19, 0x10, 0x10, 0x10],
        's' => [0x00, 0x00, 0x0E, 0x10, 0x0E, 0x01, 0x1E],
        't' => [0x08, 0x08, 0x1C, 0x08, 0x08, 0x09, 0x06],
        'u' => [0x00, 0x00, 0x11, 0x11, 0x11, 0x13, 0x0D],
        'v' => [0x00, 0x00, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'w' => [0x00, 0x00, 0x11, 0x11, 0x15, 0x15, 0x0A],
        'x' => [0x00, 0x00, 0x11, 0x0A, 0x04, 0x0A, 0x11],
        'y' => [0x00, 0x00, 0x11, 0x11, 0x0F, 0x01, 0x0E],
        'z' => [0x00, 0x00, 0x1F, 0x02, 0x04, 0x08, 0x1F],
        '+' => [0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00],
        '-' => [0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        ',' => [0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08],
        ':' => [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00],
        '/' => [0x01, 0x01, 0x02, 0x04, 0x08, 0x10, 0x10],
        '=' => [0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00],
        _ => [0; 7],
    }
}

/// An RGB picture to draw lines, text and other pictures on.
pub struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Canvas {
    /// A `w` x `h` canvas filled with `bg`.
    pub fn new(w: usize, h: usize, bg: [u8; 3]) -> Self {
        Self {
            w,
            h,
            px: bg.repeat(w * h),
        }
    }

    pub fn into_image(self) -> ImageRgb8 {
        ImageRgb8 {
            width: self.w as u32,
            height: self.h as u32,
            pixels: self.px,
        }
    }

    /// Draws `img` with its top left at (x, y), each pixel `scale` x `scale` (nearest).
    pub fn blit(&mut self, img: &ImageRgb8, x: usize, y: usize, scale: usize) {
        for sy in 0..img.height as usize * scale {
            for sx in 0..img.width as usize * scale {
                let i = ((sy / scale) * img.width as usize + sx / scale) * 3;
                if let Some(p) = img.pixels.get(i..i + 3) {
                    self.set((x + sx) as i64, (y + sy) as i64, [p[0], p[1], p[2]]);
                }
            }
        }
    }

    /// Text in the built-in 5x7 font (lower case), 6 pixels per character.
    pub fn label(&mut self, x: usize, y: usize, s: &str, c: [u8; 3]) {
        self.text(x, y, s, c);
    }

    fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < self.w && (y as usize) < self.h {
            let i = (y as usize * self.w + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }
    fn line(&mut self, (x0, y0): (f64, f64), (x1, y1): (f64, f64), c: [u8; 3], width: i64) {
        let steps = ((x1 - x0).abs().max((y1 - y0).abs()) as usize).max(1);
        for s in 0..=steps {
            let t = s as f64 / steps as f64;
            let (x, y) = ((x0 + (x1 - x0) * t).round() as i64, (y0 + (y1 - y0) * t).round() as i64);
            for dx in 0..width {
                for dy in 0..width {
                    self.set(x + dx - width / 2, y + dy - width / 2, c);
                }
            }
        }
    }
    fn text(&mut self, x: usize, y: usize, s: &str, c: [u8; 3]) {
        for (k, ch) in s.to_lowercase().chars().enumerate() {
            let g = glyph(ch);
            for (row, bits) in g.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) != 0 {
                        self.set((x + k * 6 + col) as i64, (y + row) as i64, c);
                    }
                }
            }
        }
    }
}

/// Renders series on log-log axes spanning decades `x_range` and `y_range` (powers of 10).
pub fn log_log(series: &[Series], x_label: &str, y_label: &str, x_range: (i32, i32), y_range: (i32, i32)) -> ImageRgb8 {
    let mut c = Canvas::new(W, H, [255, 255, 255]);
    let (pw, ph) = ((W - LEFT - RIGHT) as f64, (H - TOP - BOTTOM) as f64);
    let map = |x: f64, y: f64| -> (f64, f64) {
        let fx = (x.log10() - x_range.0 as f64) / (x_range.1 - x_range.0) as f64;
        let fy = (y.max(1e-300).log10() - y_range.0 as f64) / (y_range.1 - y_range.0) as f64;
        (LEFT as f64 + fx * pw, TOP as f64 + (1.0 - fy.clamp(-0.02, 1.02)) * ph)
    };
    let grey = [225, 225, 225];
    let black = [0, 0, 0];
    // Grid at every decade and at 2x, 5x for the x axis.
    for d in x_range.0..=x_range.1 {
        for m in [1.0, 2.0, 5.0] {
            let x = m * 10f64.powi(d);
            if x.log10() > x_range.1 as f64 + 1e-9 {
                continue;
            }
            let (px, _) = map(x, 1.0);
            c.line((px, TOP as f64), (px, (H - BOTTOM) as f64), grey, 1);
            c.text(px as usize - 4, H - BOTTOM + 8, &format!("{}", x as u64), black);
        }
    }
    for d in y_range.0..=y_range.1 {
        let (_, py) = map(1.0, 10f64.powi(d));
        c.line((LEFT as f64, py), ((W - RIGHT) as f64, py), grey, 1);
        c.text(8, py as usize - 3, &format!("1e{d}"), black);
    }
    c.line((LEFT as f64, TOP as f64), (LEFT as f64, (H - BOTTOM) as f64), black, 1);
    c.line(
        (LEFT as f64, (H - BOTTOM) as f64),
        ((W - RIGHT) as f64, (H - BOTTOM) as f64),
        black,
        1,
    );
    c.text(LEFT + (pw as usize) / 2 - 10, H - 18, x_label, black);
    c.text(8, 10, y_label, black);
    for (i, s) in series.iter().enumerate() {
        let col = PALETTE[i % PALETTE.len()];
        let pts: Vec<(f64, f64)> = s.points.iter().map(|(x, y)| map(*x, *y)).collect();
        for w in pts.windows(2) {
            c.line(w[0], w[1], col, 2);
        }
        for p in &pts {
            c.line((p.0 - 3.0, p.1), (p.0 + 3.0, p.1), col, 2);
        }
        let ly = TOP + 8 + i * 14;
        c.line(
            ((W - RIGHT + 12) as f64, ly as f64 + 3.0),
            ((W - RIGHT + 32) as f64, ly as f64 + 3.0),
            col,
            3,
        );
        c.text(W - RIGHT + 38, ly, &s.label, col);
    }
    c.into_image()
}
