//! A minimal MC146818 CMOS RTC on ports 0x70 (index) and 0x71 (data): the host's UTC
//! time in BCD, 24-hour mode, never "update in progress", no interrupts. Linux's early
//! clock read and `rtc_cmos` then find a sane clock at once instead of spinning on a
//! floating bus (all ones: UIP always set).

use std::time::{SystemTime, UNIX_EPOCH};

/// The index port (bit 7 of a write is the NMI mask, ignored).
pub const RTC_INDEX_PORT: u16 = 0x70;
/// The data port.
pub const RTC_DATA_PORT: u16 = 0x71;

/// Register A: divider 32.768 kHz (0x20), rate 1024 Hz (0x06); UIP (bit 7) always 0.
pub const REG_A_VALUE: u8 = 0x26;
/// Register B: 24-hour mode (bit 1); BCD (bit 2 clear); no interrupts enabled.
pub const REG_B_VALUE: u8 = 0x02;
/// Register D: VRT (bit 7), the battery is fine and the time valid.
pub const REG_D_VALUE: u8 = 0x80;
/// CMOS index of the century byte (what Linux reads without ACPI's FADT).
pub const CENTURY_INDEX: u8 = 0x32;

/// A calendar time, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CivilTime {
    /// Full year, e.g. 2026.
    pub year: u32,
    /// 1..=12.
    pub month: u32,
    /// 1..=31.
    pub day: u32,
    /// 0..=23.
    pub hour: u32,
    /// 0..=59.
    pub minute: u32,
    /// 0..=59.
    pub second: u32,
    /// 1 = Sunday .. 7 = Saturday (the RTC's convention).
    pub weekday: u32,
}

impl CivilTime {
    /// The calendar time of `secs` seconds after the Unix epoch (proleptic Gregorian,
    /// H. Hinnant's `civil_from_days`).
    pub fn from_unix(secs: u64) -> Self {
        let days = secs / 86_400;
        let rem = secs % 86_400;
        let z = days as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        Self {
            year: year as u32,
            month: month as u32,
            day: day as u32,
            hour: (rem / 3600) as u32,
            minute: (rem / 60 % 60) as u32,
            second: (rem % 60) as u32,
            // 1970-01-01 was a Thursday (5 in 1 = Sunday numbering).
            weekday: ((days + 4) % 7 + 1) as u32,
        }
    }
}

fn bcd(value: u32) -> u8 {
    let value = value % 100;
    (((value / 10) << 4) | (value % 10)) as u8
}

/// The CMOS RTC and its 128 bytes of RAM.
#[derive(Debug)]
pub struct Rtc {
    index: u8,
    ram: [u8; 128],
    clock: fn() -> u64,
}

fn host_unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Default for Rtc {
    fn default() -> Self {
        Self::with_clock(host_unix_seconds)
    }
}

impl Rtc {
    /// An RTC reading time from `clock` (seconds since the Unix epoch).
    pub fn with_clock(clock: fn() -> u64) -> Self {
        Self {
            index: 0,
            ram: [0; 128],
            clock,
        }
    }

    /// The selected register and the CMOS RAM (the time is the host's), for a snapshot.
    pub fn record(&self) -> (u8, [u8; 128]) {
        (self.index, self.ram)
    }

    /// An RTC with the register selection and CMOS RAM of [`Rtc::record`].
    pub fn from_record(index: u8, ram: [u8; 128]) -> Self {
        Self {
            index: index & 0x7f,
            ram,
            ..Self::default()
        }
    }

    /// Whether `port` belongs to the RTC.
    pub fn claims(port: u16) -> bool {
        port == RTC_INDEX_PORT || port == RTC_DATA_PORT
    }

    /// A one-byte write.
    pub fn write(&mut self, port: u16, value: u8) {
        match port {
            RTC_INDEX_PORT => self.index = value & 0x7f,
            // Writes to the clock and status registers are ignored (the time is the
            // host's); other CMOS bytes are plain RAM (e.g. the shutdown status 0x0f).
            RTC_DATA_PORT if self.index > 0x0d => self.ram[usize::from(self.index)] = value,
            _ => {}
        }
    }

    /// A one-byte read.
    pub fn read(&mut self, port: u16) -> u8 {
        match port {
            RTC_INDEX_PORT => 0xff,
            _ => self.register(self.index),
        }
    }

    fn register(&self, index: u8) -> u8 {
        let now = || CivilTime::from_unix((self.clock)());
        match index {
            0x00 => bcd(now().second),
            0x02 => bcd(now().minute),
            0x04 => bcd(now().hour),
            0x06 => bcd(now().weekday),
            0x07 => bcd(now().day),
            0x08 => bcd(now().month),
            0x09 => bcd(now().year),
            // Alarms: never match (no interrupts anyway).
            0x01 | 0x03 | 0x05 => 0,
            0x0a => REG_A_VALUE,
            0x0b => REG_B_VALUE,
            0x0c => 0,
            0x0d => REG_D_VALUE,
            CENTURY_INDEX => bcd(now().year / 100),
            _ => self.ram[usize::from(index & 0x7f)],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-26 05:16:51 UTC, a Thursday.
    fn fixed() -> u64 {
        1_795_670_211
    }

    fn read(rtc: &mut Rtc, index: u8) -> u8 {
        rtc.write(RTC_INDEX_PORT, index);
        rtc.read(RTC_DATA_PORT)
    }

    #[test]
    fn civil_time_from_unix() {
        let t = CivilTime::from_unix(fixed());
        assert_eq!(
            (
                t.year, t.month, t.day, t.hour, t.minute, t.second, t.weekday
            ),
            (2026, 11, 26, 5, 16, 51, 5)
        );
        let epoch = CivilTime::from_unix(0);
        assert_eq!(
            (epoch.year, epoch.month, epoch.day, epoch.weekday),
            (1970, 1, 1, 5)
        );
        // A leap day.
        let leap = CivilTime::from_unix(951_782_400);
        assert_eq!((leap.year, leap.month, leap.day), (2000, 2, 29));
    }

    #[test]
    fn registers_read_bcd_time_and_sane_status() {
        let mut rtc = Rtc::with_clock(fixed);
        assert_eq!(read(&mut rtc, 0x00), 0x51);
        assert_eq!(read(&mut rtc, 0x02), 0x16);
        assert_eq!(read(&mut rtc, 0x04), 0x05);
        assert_eq!(read(&mut rtc, 0x06), 0x05);
        assert_eq!(read(&mut rtc, 0x07), 0x26);
        assert_eq!(read(&mut rtc, 0x08), 0x11);
        assert_eq!(read(&mut rtc, 0x09), 0x26);
        assert_eq!(read(&mut rtc, CENTURY_INDEX), 0x20);
        // Never "update in progress", 24 h BCD, no interrupt flags, valid.
        assert_eq!(read(&mut rtc, 0x0a) & 0x80, 0);
        assert_eq!(read(&mut rtc, 0x0b), REG_B_VALUE);
        assert_eq!(read(&mut rtc, 0x0c), 0);
        assert_eq!(read(&mut rtc, 0x0d), REG_D_VALUE);
    }

    #[test]
    fn nmi_bit_is_ignored_and_cmos_ram_keeps_writes() {
        let mut rtc = Rtc::with_clock(fixed);
        assert_eq!(
            read(&mut rtc, 0x80),
            0x51,
            "bit 7 of the index is the NMI mask"
        );
        rtc.write(RTC_INDEX_PORT, 0x0f);
        rtc.write(RTC_DATA_PORT, 0x0a);
        assert_eq!(read(&mut rtc, 0x0f), 0x0a);
        // The clock ignores writes.
        rtc.write(RTC_INDEX_PORT, 0x00);
        rtc.write(RTC_DATA_PORT, 0x99);
        assert_eq!(read(&mut rtc, 0x00), 0x51);
        assert!(Rtc::claims(0x70) && Rtc::claims(0x71) && !Rtc::claims(0x72));
    }
}
