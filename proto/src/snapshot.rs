//! The compact encoding of entity updates in a snapshot datagram.
//!
//! A snapshot is what bounds a 3D client's bandwidth, so its updates are
//! packed by hand rather than left to the generic codec (docs/protocol.md,
//! "Snapshot encoding"):
//! - an entity is named by its **slot**, a small per-connection number the
//!   router gave it in `EntityAppeared`, not by its 8-byte id;
//! - positions are centimetres relative to the snapshot's `origin` (the
//!   receiving player's own position), two bytes per axis within ±327 m,
//!   four beyond;
//! - velocities are centimetres per second in two bytes per axis, and left
//!   out entirely for an entity at rest;
//! - the heading is a 16-bit fraction of a full turn.
//!
//! A typical update is 10 bytes at rest and 16 moving, against 30 to 40 for
//! the generic encoding of ids and `f32`s. Every decode checks lengths and
//! flags: garbage is an error, never a panic.

use crate::Vec3;

/// Largest slot a router hands out; slots encode in one byte below 128 and
/// two bytes up to this.
pub const MAX_SLOT: u16 = 0x3fff;

/// Centimetres per metre: the position and velocity resolution.
const CM: f32 = 100.0;
/// Update flag: a velocity follows the position.
const FLAG_VEL: u8 = 1;
/// Update flag: the position is 3 × i32 rather than 3 × i16.
const FLAG_WIDE: u8 = 2;
const KNOWN_FLAGS: u8 = FLAG_VEL | FLAG_WIDE;

/// One entity's state as sent: quantized to the wire's resolution. Two
/// updates are equal exactly when they encode to the same bytes, so the
/// router compares these to skip unchanged entities.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EntityUpdate {
    /// The entity's slot on this connection (`EntityAppeared`).
    pub slot: u16,
    /// Absolute position in centimetres.
    pub pos: [i32; 3],
    /// Velocity in centimetres per second.
    pub vel: [i16; 3],
    /// Heading as a fraction of a full turn, 0..65536 ↔ 0..2π.
    pub yaw: u16,
}

/// A length in metres as whole centimetres (saturating; NaN is 0).
pub fn to_cm(m: f32) -> i32 {
    (m * CM).round() as i32
}

/// A point in metres as whole centimetres per axis.
pub fn quantize_pos(p: Vec3) -> [i32; 3] {
    [to_cm(p.x), to_cm(p.y), to_cm(p.z)]
}

/// Centimetres back to a point in metres.
pub fn pos_from_cm(cm: [i32; 3]) -> Vec3 {
    Vec3::new(cm[0] as f32 / CM, cm[1] as f32 / CM, cm[2] as f32 / CM)
}

impl EntityUpdate {
    /// Quantizes an entity's state for slot `slot`.
    pub fn quantize(slot: u16, pos: Vec3, vel: Vec3, yaw: f32) -> EntityUpdate {
        let v = |m: f32| (m * CM).round().clamp(i16::MIN as f32, i16::MAX as f32) as i16;
        let turn = std::f32::consts::TAU;
        let yaw = if yaw.is_finite() {
            (yaw.rem_euclid(turn) / turn * 65536.0).round() as u32 as u16
        } else {
            0
        };
        EntityUpdate {
            slot,
            pos: quantize_pos(pos),
            vel: [v(vel.x), v(vel.y), v(vel.z)],
            yaw,
        }
    }

    /// The position in metres.
    pub fn pos(&self) -> Vec3 {
        pos_from_cm(self.pos)
    }

    /// The velocity in metres per second.
    pub fn vel(&self) -> Vec3 {
        Vec3::new(
            self.vel[0] as f32 / CM,
            self.vel[1] as f32 / CM,
            self.vel[2] as f32 / CM,
        )
    }

    /// The heading in radians, in `[0, 2π)`.
    pub fn yaw(&self) -> f32 {
        self.yaw as f32 / 65536.0 * std::f32::consts::TAU
    }

    /// The position relative to `origin`, if it fits the narrow form.
    fn narrow(&self, origin: [i32; 3]) -> Option<[i16; 3]> {
        let mut out = [0i16; 3];
        for (k, o) in out.iter_mut().enumerate() {
            let d = i64::from(self.pos[k]) - i64::from(origin[k]);
            *o = i16::try_from(d).ok()?;
        }
        Some(out)
    }

    /// How many bytes this update takes relative to `origin`.
    pub fn encoded_len(&self, origin: [i32; 3]) -> usize {
        let slot = if self.slot < 0x80 { 1 } else { 2 };
        let pos = if self.narrow(origin).is_some() { 6 } else { 12 };
        let vel = if self.vel == [0; 3] { 0 } else { 6 };
        slot + 1 + pos + vel + 2
    }

    /// Appends this update, relative to `origin`, to `out`.
    ///
    /// # Panics
    /// If `slot` is above [`MAX_SLOT`] (routers never hand one out).
    pub fn encode(&self, origin: [i32; 3], out: &mut Vec<u8>) {
        assert!(self.slot <= MAX_SLOT, "slot {} over MAX_SLOT", self.slot);
        if self.slot < 0x80 {
            out.push(self.slot as u8);
        } else {
            out.push(0x80 | (self.slot & 0x7f) as u8);
            out.push((self.slot >> 7) as u8);
        }
        let narrow = self.narrow(origin);
        let moving = self.vel != [0; 3];
        let mut flags = 0;
        if moving {
            flags |= FLAG_VEL;
        }
        if narrow.is_none() {
            flags |= FLAG_WIDE;
        }
        out.push(flags);
        match narrow {
            Some(d) => d
                .iter()
                .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
            None => {
                for (p, o) in self.pos.iter().zip(origin) {
                    out.extend_from_slice(&p.wrapping_sub(o).to_le_bytes());
                }
            }
        }
        if moving {
            self.vel
                .iter()
                .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        }
        out.extend_from_slice(&self.yaw.to_le_bytes());
    }
}

/// Why a snapshot's updates could not be read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot updates end in the middle of an update (at byte {0})")]
    Truncated(usize),
    #[error("snapshot update at byte {at} has unknown flags {flags:#04x}")]
    Flags { at: usize, flags: u8 },
    #[error("snapshot update at byte {0} has a slot over the largest slot")]
    Slot(usize),
}

/// Encodes `updates` relative to `origin`.
pub fn encode_updates(origin: [i32; 3], updates: &[EntityUpdate]) -> Vec<u8> {
    let mut out = Vec::with_capacity(updates.iter().map(|u| u.encoded_len(origin)).sum());
    for u in updates {
        u.encode(origin, &mut out);
    }
    out
}

/// Decodes what [`encode_updates`] wrote, relative to the same `origin`.
pub fn decode_updates(origin: [i32; 3], bytes: &[u8]) -> Result<Vec<EntityUpdate>, SnapshotError> {
    let mut r = Reader { bytes, at: 0 };
    let mut out = Vec::new();
    while r.at < bytes.len() {
        let start = r.at;
        let b0 = r.u8()?;
        let slot = if b0 & 0x80 == 0 {
            u16::from(b0)
        } else {
            let b1 = r.u8()?;
            if b1 & 0x80 != 0 {
                return Err(SnapshotError::Slot(start));
            }
            u16::from(b0 & 0x7f) | (u16::from(b1) << 7)
        };
        let flags = r.u8()?;
        if flags & !KNOWN_FLAGS != 0 {
            return Err(SnapshotError::Flags { at: start, flags });
        }
        let mut pos = [0i32; 3];
        for (k, p) in pos.iter_mut().enumerate() {
            let d = if flags & FLAG_WIDE != 0 {
                i32::from_le_bytes(r.take()?)
            } else {
                i32::from(i16::from_le_bytes(r.take()?))
            };
            *p = origin[k].wrapping_add(d);
        }
        let mut vel = [0i16; 3];
        if flags & FLAG_VEL != 0 {
            for v in vel.iter_mut() {
                *v = i16::from_le_bytes(r.take()?);
            }
        }
        let yaw = u16::from_le_bytes(r.take()?);
        out.push(EntityUpdate {
            slot,
            pos,
            vel,
            yaw,
        });
    }
    Ok(out)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], SnapshotError> {
        let end = self.at + N;
        let b = self
            .bytes
            .get(self.at..end)
            .ok_or(SnapshotError::Truncated(self.at))?;
        self.at = end;
        Ok(b.try_into().expect("slice of N bytes"))
    }

    fn u8(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.take::<1>()?[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn update() -> impl Strategy<Value = EntityUpdate> {
        (
            0..=MAX_SLOT,
            prop::array::uniform3(any::<i32>()),
            prop::array::uniform3(prop_oneof![Just(0i16), any::<i16>()]),
            any::<u16>(),
        )
            .prop_map(|(slot, pos, vel, yaw)| EntityUpdate {
                slot,
                pos,
                vel,
                yaw,
            })
    }

    proptest! {
        #[test]
        fn updates_round_trip_and_their_length_is_known(
            origin in prop::array::uniform3(any::<i32>()),
            near in prop::collection::vec((0..=MAX_SLOT, prop::array::uniform3(-40_000i32..40_000)), 0..20),
            any_updates in prop::collection::vec(update(), 0..20),
        ) {
            let mut updates: Vec<EntityUpdate> = near
                .into_iter()
                .map(|(slot, d)| EntityUpdate {
                    slot,
                    pos: [0, 1, 2].map(|k| origin[k].wrapping_add(d[k])),
                    vel: [0; 3],
                    yaw: 7,
                })
                .collect();
            updates.extend(any_updates);
            let bytes = encode_updates(origin, &updates);
            let len: usize = updates.iter().map(|u| u.encoded_len(origin)).sum();
            prop_assert_eq!(bytes.len(), len);
            prop_assert_eq!(decode_updates(origin, &bytes), Ok(updates));
        }

        #[test]
        fn garbage_is_an_error_or_some_updates_never_a_panic(
            origin in prop::array::uniform3(any::<i32>()),
            bytes in prop::collection::vec(any::<u8>(), 0..200),
        ) {
            let _ = decode_updates(origin, &bytes);
        }
    }

    #[test]
    fn quantizing_keeps_centimetres_and_headings() {
        let u = EntityUpdate::quantize(
            3,
            Vec3::new(12.345, -0.5, 1000.0),
            Vec3::new(4.0, 0.0, -0.004),
            -std::f32::consts::FRAC_PI_2,
        );
        assert_eq!(u.pos, [1235, -50, 100_000]);
        assert_eq!(u.vel, [400, 0, 0]);
        assert!((u.yaw() - 3.0 * std::f32::consts::FRAC_PI_2).abs() < 1e-3);
        assert!(u.pos().distance(Vec3::new(12.35, -0.5, 1000.0)) < 1e-3);
        // Out of range and not-a-number saturate rather than wrap.
        let wild = EntityUpdate::quantize(
            0,
            Vec3::new(f32::NAN, 1e12, -1e12),
            Vec3::new(1e9, f32::NAN, 0.0),
            f32::INFINITY,
        );
        assert_eq!(wild.pos, [0, i32::MAX, i32::MIN]);
        assert_eq!(wild.vel, [i16::MAX, 0, 0]);
        assert_eq!(wild.yaw, 0);
    }

    #[test]
    fn an_entity_at_rest_nearby_takes_ten_bytes_and_moving_sixteen() {
        let origin = quantize_pos(Vec3::new(100.0, 0.0, 100.0));
        let at_rest = EntityUpdate::quantize(5, Vec3::new(120.0, 0.0, 90.0), Vec3::ZERO, 1.0);
        let moving = EntityUpdate::quantize(
            5,
            Vec3::new(120.0, 0.0, 90.0),
            Vec3::new(3.0, 0.0, 1.0),
            1.0,
        );
        let far = EntityUpdate::quantize(500, Vec3::new(1000.0, 0.0, 90.0), Vec3::ZERO, 1.0);
        assert_eq!(encode_updates(origin, &[at_rest]).len(), 10);
        assert_eq!(encode_updates(origin, &[moving]).len(), 16);
        assert_eq!(
            encode_updates(origin, &[far]).len(),
            17,
            "two-byte slot, wide position"
        );
    }

    /// The worked example of docs/protocol.md, section 3, byte for byte.
    #[test]
    fn the_documented_example_encodes_as_documented() {
        use crate::msg::ServerDatagram;
        let me = Vec3::new(1.0, 0.0, -2.0);
        let origin = quantize_pos(me);
        let updates = [
            EntityUpdate::quantize(0, me, Vec3::ZERO, 0.0),
            EntityUpdate::quantize(
                1,
                Vec3::new(3.0, 0.0, -2.0),
                Vec3::new(1.5, 0.0, 0.0),
                std::f32::consts::FRAC_PI_2,
            ),
        ];
        let bytes = crate::frame::encode(&ServerDatagram::Snapshot {
            tick: 1000,
            ack_input: 42,
            origin,
            entities: encode_updates(origin, &updates),
        })
        .unwrap();
        let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex.join(" "),
            "00 fb e8 03 2a c8 00 fb 8f 01 1a \
             00 00 00 00 00 00 00 00 00 00 \
             01 01 c8 00 00 00 00 00 96 00 00 00 00 00 00 40"
        );
    }

    #[test]
    fn bad_bytes_are_named() {
        let origin = [0; 3];
        let good = encode_updates(
            origin,
            &[EntityUpdate::quantize(
                1,
                Vec3::ZERO,
                Vec3::new(1.0, 0.0, 0.0),
                0.0,
            )],
        );
        assert_eq!(
            decode_updates(origin, &good[..good.len() - 1]),
            Err(SnapshotError::Truncated(good.len() - 2))
        );
        assert_eq!(
            decode_updates(origin, &[1, 0x80, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(SnapshotError::Flags { at: 0, flags: 0x80 })
        );
        assert_eq!(
            decode_updates(origin, &[0x81, 0x81, 0]),
            Err(SnapshotError::Slot(0))
        );
    }
}
