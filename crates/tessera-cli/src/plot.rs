//! Line charts as PNG files, drawn by hand: an RGB raster, a 5×7 bitmap font for labels, and a
//! minimal PNG encoder (zlib via flate2, CRC-32 computed here). Enough for loss curves.

use std::io::Write;

use anyhow::Result;

/// One line of a chart.
pub struct Series {
    pub label: String,
    pub color: [u8; 3],
    pub points: Vec<(f64, f64)>,
    pub dashed: bool,
}

/// A chart with axis titles.
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

const W: usize = 900;
const H: usize = 560;
const LEFT: usize = 90;
const RIGHT: usize = 30;
const TOP: usize = 50;
const BOTTOM: usize = 70;
const SCALE: usize = 2;

struct Canvas {
    px: Vec<u8>,
}

impl Canvas {
    fn new() -> Self {
        Self { px: vec![255; W * H * 3] }
    }

    fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < W && (y as usize) < H {
            let i = (y as usize * W + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }

    /// A line from (x0, y0) to (x1, y1), 2 px thick; dashed draws 8 on, 6 off.
    fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: [u8; 3], dashed: bool) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err, mut n) = (x0, y0, dx + dy, 0);
        loop {
            if !dashed || n % 14 < 8 {
                for (ox, oy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                    self.set(x + ox, y + oy, c);
                }
            }
            n += 1;
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    fn text(&mut self, x: i64, y: i64, s: &str, c: [u8; 3]) {
        for (k, ch) in s.chars().enumerate() {
            let g = glyph(ch);
            for (row, bits) in g.iter().enumerate() {
                for col in 0..5 {
                    if bits >> (4 - col) & 1 == 1 {
                        for (ox, oy) in (0..SCALE).flat_map(|a| (0..SCALE).map(move |b| (a, b))) {
                            let px = x + ((k * 6 + col) * SCALE + ox) as i64;
                            self.set(px, y + (row * SCALE + oy) as i64, c);
                        }
                    }
                }
            }
        }
    }
}

fn text_width(s: &str) -> i64 {
    (s.chars().count() * 6 * SCALE) as i64
}

/// A 5×7 glyph, one row per byte, bit 4 = leftmost column. Unknown characters draw blank.
fn glyph(c: char) -> [u8; 7] {
    match c {
        '0' => [14, 17, 19, 21, 25, 17, 14],
        '1' => [4, 12, 4, 4, 4, 4, 14],
        '2' => [14, 17, 1, 2, 4, 8, 31],
        '3' => [30, 1, 1, 14, 1, 1, 30],
        '4' => [2, 6, 10, 18, 31, 2, 2],
        '5' => [31, 16, 30, 1, 1, 17, 14],
        '6' => [6, 8, 16, 30, 17, 17, 14],
        '7' => [31, 1, 2, 4, 8, 8, 8],
        '8' => [14, 17, 17, 14, 17, 17, 14],
        '9' => [14, 17, 17, 15, 1, 2, 12],
        '.' => [0, 0, 0, 0, 0, 12, 12],
        '-' => [0, 0, 0, 31, 0, 0, 0],
        '/' => [1, 2, 2, 4, 8, 8, 16],
        '(' => [2, 4, 8, 8, 8, 4, 2],
        ')' => [8, 4, 2, 2, 2, 4, 8],
        ':' => [0, 12, 12, 0, 12, 12, 0],
        'a' => [0, 0, 14, 1, 15, 17, 15],
        'b' => [16, 16, 22, 25, 17, 17, 30],
        'c' => [0, 0, 14, 16, 16, 17, 14],
        'd' => [1, 1, 13, 19, 17, 17, 15],
        'e' => [0, 0, 14, 17, 31, 16, 14],
        'f' => [6, 9, 8, 28, 8, 8, 8],
        'g' => [0, 15, 17, 17, 15, 1, 14],
        'h' => [16, 16, 22, 25, 17, 17, 17],
        'i' => [4, 0, 12, 4, 4, 4, 14],
        'j' => [2, 0, 6, 2, 2, 18, 12],
        'k' => [16, 16, 18, 20, 24, 20, 18],
        'l' => [12, 4, 4, 4, 4, 4, 14],
        'm' => [0, 0, 26, 21, 21, 17, 17],
        'n' => [0, 0, 22, 25, 17, 17, 17],
        'o' => [0, 0, 14, 17, 17, 17, 14],
        'p' => [0, 0, 30, 17, 30, 16, 16],
        'q' => [0, 0, 13, 19, 15, 1, 1],
        'r' => [0, 0, 22, 25, 16, 16, 16],
        's' => [0, 0, 15, 16, 14, 1, 30],
        't' => [8, 8, 28, 8, 8, 9, 6],
        'u' => [0, 0, 17, 17, 17, 19, 13],
        'v' => [0, 0, 17, 17, 17, 10, 4],
        'w' => [0, 0, 17, 17, 21, 21, 10],
        'x' => [0, 0, 17, 10, 4, 10, 17],
        'y' => [0, 0, 17, 17, 15, 1, 14],
        'z' => [0, 0, 31, 2, 4, 8, 31],
        _ => [0; 7],
    }
}

/// A short decimal label for a tick value.
fn tick_label(v: f64, step: f64) -> String {
    let decimals = if step >= 1.0 { 0 } else { (-step.log10()).ceil() as usize };
    format!("{v:.decimals$}")
}

/// Round tick spacing: 1, 2 or 5 times a power of ten, giving about `n` ticks.
fn nice_step(range: f64, n: f64) -> f64 {
    let raw = (range / n).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * mag).find(|&s| s >= raw).unwrap_or(10.0 * mag)
}

impl Chart {
    /// Renders the chart as PNG bytes.
    pub fn render(&self) -> Vec<u8> {
        let mut cv = Canvas::new();
        let pts =
            self.series.iter().flat_map(|s| s.points.iter()).filter(|p| p.0.is_finite() && p.1.is_finite());
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &(x, y) in pts {
            (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
        }
        if x0 > x1 {
            (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
        }
        let (ys, xs) = (nice_step(y1 - y0, 6.0), nice_step(x1 - x0, 8.0));
        let (y0, y1) = ((y0 / ys).floor() * ys, ((y1 / ys).ceil() * ys).max(y0 + ys));
        let x1 = x1.max(x0 + 1.0);
        let (pw, ph) = ((W - LEFT - RIGHT) as f64, (H - TOP - BOTTOM) as f64);
        let map = |x: f64, y: f64| {
            let px = LEFT as f64 + (x - x0) / (x1 - x0) * pw;
            let py = TOP as f64 + (1.0 - (y - y0) / (y1 - y0)) * ph;
            (px.round() as i64, py.round() as i64)
        };
        let (grey, black) = ([220, 220, 220], [0, 0, 0]);
        let mut y = y0;
        while y <= y1 + ys * 0.5 {
            let (_, py) = map(x0, y);
            cv.line((LEFT as i64, py), ((W - RIGHT) as i64, py), grey, false);
            let l = tick_label(y, ys);
            cv.text(LEFT as i64 - 8 - text_width(&l), py - 7, &l, black);
            y += ys;
        }
        let mut x = (x0 / xs).ceil() * xs;
        while x <= x1 {
            let (px, _) = map(x, y0);
            cv.line((px, TOP as i64), (px, (H - BOTTOM) as i64), grey, false);
            let l = tick_label(x, xs);
            cv.text(px - text_width(&l) / 2, (H - BOTTOM) as i64 + 8, &l, black);
            x += xs;
        }
        let (l, t, r, b) = (LEFT as i64, TOP as i64, (W - RIGHT) as i64, (H - BOTTOM) as i64);
        for (p, q) in [((l, t), (r, t)), ((r, t), (r, b)), ((r, b), (l, b)), ((l, b), (l, t))] {
            cv.line(p, q, black, false);
        }
        for s in &self.series {
            let p: Vec<(i64, i64)> = s
                .points
                .iter()
                .filter(|p| p.0.is_finite() && p.1.is_finite())
                .map(|&(x, y)| map(x, y))
                .collect();
            for w in p.windows(2) {
                cv.line(w[0], w[1], s.color, s.dashed);
            }
        }
        cv.text(8, 14, &self.y_label, black);
        cv.text(LEFT as i64 + 140, 14, &self.title, black);
        cv.text((W as i64 - text_width(&self.x_label)) / 2, H as i64 - 30, &self.x_label, black);
        // Legend: one entry per line at the top right of the plot area.
        let widest = self.series.iter().map(|s| text_width(&s.label)).max().unwrap_or(0);
        let lx = (W - RIGHT) as i64 - widest - 50;
        for (k, s) in self.series.iter().enumerate() {
            let y = TOP as i64 + 12 + 20 * k as i64;
            cv.line((lx, y + 6), (lx + 24, y + 6), s.color, s.dashed);
            cv.text(lx + 30, y, &s.label, black);
        }
        encode_png(&cv.px, W, H)
    }

    /// Renders and writes the chart to `path`.
    pub fn write(&self, path: &std::path::Path) -> Result<()> {
        std::fs::write(path, self.render())?;
        Ok(())
    }
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in bytes {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 == 1 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
        }
    }
    !c
}

/// Encodes 8-bit RGB pixels as PNG (no filtering, zlib-compressed).
fn encode_png(rgb: &[u8], w: usize, h: usize) -> Vec<u8> {
    let mut raw = Vec::with_capacity((w * 3 + 1) * h);
    for row in rgb.chunks(w * 3) {
        raw.push(0);
        raw.extend_from_slice(row);
    }
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(&raw).expect("in-memory write");
    let idat = z.finish().expect("in-memory write");
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend((w as u32).to_be_bytes());
    ihdr.extend((h as u32).to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    for (kind, data) in [(b"IHDR", ihdr), (b"IDAT", idat), (b"IEND", Vec::new())] {
        out.extend((data.len() as u32).to_be_bytes());
        let mut chunk = kind.to_vec();
        chunk.extend(&data);
        out.extend(&chunk);
        out.extend(crc32(&chunk).to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn renders_a_png() {
        let c = Chart {
            title: "t".into(),
            x_label: "step".into(),
            y_label: "loss".into(),
            series: vec![Series {
                label: "train".into(),
                color: [0, 0, 255],
                points: vec![(0.0, 5.0), (10.0, 3.0)],
                dashed: false,
            }],
        };
        let png = c.render();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(nice_step(10.0, 5.0), 2.0);
    }
}
