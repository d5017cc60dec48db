//! Nothing is written on a channel after its `channel.close-ok`.
//!
//! When the broker closes a channel, lapin 4 answers `channel.close-ok`
//! from its normal-priority frame queue, while publishes wait in a
//! low-priority queue: a publish pushed just before the close arrived is
//! serialized *after* the close-ok, on a channel the broker has closed, and
//! RabbitMQ answers with a connection exception (`CHANNEL_ERROR - expected
//! 'channel.open'`), costing a healthy connection. lapin offers no way to
//! withdraw a queued frame, so the link's socket drops, at the frame
//! level, every frame on a channel between a client `channel.close-ok` and
//! the next `channel.open` on that id. What it drops the broker would have
//! discarded anyway (the channel is gone); its publish's confirm has
//! already failed with the channel's error (lapin fails every pending
//! confirm of a closing channel).
//!
//! Only on a plaintext socket: under TLS the socket carries ciphertext.

use std::collections::HashSet;

const PROTOCOL_HEADER_LEN: usize = 8;
const FRAME_HEADER_LEN: usize = 7;
const METHOD: u8 = 1;
const CHANNEL_CLASS: u16 = 20;
const CHANNEL_OPEN: u16 = 10;
const CHANNEL_CLOSE_OK: u16 = 41;

/// A streaming filter over the client's outbound bytes (see the module docs).
#[derive(Debug)]
pub(crate) struct FrameGuard {
    /// Protocol header bytes still to pass.
    protocol_left: usize,
    /// The start of the current frame, until it is known whether it passes.
    head: Vec<u8>,
    /// Bytes left in the current frame (payload and end marker) once decided.
    body_left: usize,
    dropping: bool,
    closed: HashSet<u16>,
    dropped: u64,
}

impl Default for FrameGuard {
    fn default() -> Self {
        Self {
            protocol_left: PROTOCOL_HEADER_LEN,
            head: Vec::with_capacity(FRAME_HEADER_LEN + 4),
            body_left: 0,
            dropping: false,
            closed: HashSet::new(),
            dropped: 0,
        }
    }
}

impl FrameGuard {
    /// Frames dropped so far.
    #[cfg(test)]
    fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Appends to `out` what of `input` may go to the broker.
    pub(crate) fn filter(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() {
            if self.protocol_left > 0 {
                let n = self.protocol_left.min(input.len());
                out.extend_from_slice(&input[..n]);
                self.protocol_left -= n;
                input = &input[n..];
            } else if self.body_left > 0 {
                let n = self.body_left.min(input.len());
                if !self.dropping {
                    out.extend_from_slice(&input[..n]);
                }
                self.body_left -= n;
                input = &input[n..];
            } else {
                // A frame starts: type (1), channel (2), size (4); a method
                // frame's class and method ids (2 + 2) follow.
                let need = if self.head.len() >= FRAME_HEADER_LEN && self.head[0] == METHOD {
                    FRAME_HEADER_LEN + 4
                } else {
                    FRAME_HEADER_LEN
                };
                let n = (need - self.head.len()).min(input.len());
                self.head.extend_from_slice(&input[..n]);
                input = &input[n..];
                if self.head.len() < need
                    || (self.head[0] == METHOD && self.head.len() < FRAME_HEADER_LEN + 4)
                {
                    continue;
                }
                self.decide(out);
            }
        }
    }

    fn decide(&mut self, out: &mut Vec<u8>) {
        let h = &self.head;
        let kind = h[0];
        let channel = u16::from_be_bytes([h[1], h[2]]);
        let size = u32::from_be_bytes([h[3], h[4], h[5], h[6]]) as usize;
        let method = (kind == METHOD).then(|| {
            (
                u16::from_be_bytes([h[7], h[8]]),
                u16::from_be_bytes([h[9], h[10]]),
            )
        });
        if method == Some((CHANNEL_CLASS, CHANNEL_OPEN)) {
            self.closed.remove(&channel);
        }
        self.dropping = self.closed.contains(&channel);
        if method == Some((CHANNEL_CLASS, CHANNEL_CLOSE_OK)) && !self.dropping {
            self.closed.insert(channel);
        }
        if self.dropping {
            self.dropped += 1;
            tracing::debug!(channel, kind, "frame after channel.close-ok dropped");
        } else {
            out.extend_from_slice(&self.head);
        }
        // Payload plus the frame-end octet, less what the head already held.
        self.body_left = (FRAME_HEADER_LEN + size + 1).saturating_sub(self.head.len());
        self.head.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![kind];
        f.extend_from_slice(&channel.to_be_bytes());
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        f.extend_from_slice(payload);
        f.push(0xCE);
        f
    }

    fn method(channel: u16, class: u16, id: u16, args: &[u8]) -> Vec<u8> {
        let mut p = class.to_be_bytes().to_vec();
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(args);
        frame(METHOD, channel, &p)
    }

    fn stream() -> (Vec<u8>, Vec<u8>) {
        let publish = |ch| {
            let mut v = method(ch, 60, 40, b"\0\0\x01k\0");
            v.extend(frame(2, ch, &[0; 14]));
            v.extend(frame(3, ch, b"body"));
            v
        };
        let mut input = b"AMQP\x00\x00\x09\x01".to_vec();
        let mut want = input.clone();
        for part in [
            publish(2),
            frame(8, 0, &[]),
            method(2, CHANNEL_CLASS, CHANNEL_CLOSE_OK, &[]),
        ] {
            input.extend(&part);
            want.extend(&part);
        }
        // After the close-ok: a publish on 2 is dropped, 3 is untouched.
        input.extend(publish(2));
        for part in [
            publish(3),
            method(2, CHANNEL_CLASS, CHANNEL_OPEN, b"\0"),
            publish(2),
        ] {
            input.extend(&part);
            want.extend(&part);
        }
        (input, want)
    }

    #[test]
    fn drops_frames_after_a_close_ok_until_the_channel_reopens() {
        let (input, want) = stream();
        let mut g = FrameGuard::default();
        let mut out = Vec::new();
        g.filter(&input, &mut out);
        assert_eq!(out, want);
        assert_eq!(g.dropped(), 3);
    }

    #[test]
    fn any_split_of_the_stream_gives_the_same_bytes() {
        let (input, want) = stream();
        for chunk in 1..input.len() {
            let mut g = FrameGuard::default();
            let mut out = Vec::new();
            for part in input.chunks(chunk) {
                g.filter(part, &mut out);
            }
            assert_eq!(out, want, "chunks of {chunk}");
        }
    }
}
