//! Criterion micro-benchmarks of the wire codec: one CALL of about 100 bytes decoded and
//! encoded, and the frame reader reassembling a buffer of many PUBLISH frames.
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use meshgate_shard::wire::{
    msgpack, Call, CallIdRef, FrameReader, Message, Publish, Raw, HEADER_LEN,
};
use meshgate_shard::NodeId;

/// `args` of the CALL: `{"sensor": "temp-42", "window": 60}`, as a client would send it.
fn call_args() -> Vec<u8> {
    let mut args = Vec::new();
    msgpack::write_map_len(&mut args, 2);
    msgpack::write_bin(&mut args, b"sensor");
    msgpack::write_bin(&mut args, b"temp-42");
    msgpack::write_bin(&mut args, b"window");
    msgpack::write_uint(&mut args, 60);
    args
}

fn call(args: &[u8]) -> Message<'_> {
    Message::Call(Call {
        procedure: b"metering.read_window",
        args: Raw(args),
        call_id: Some(CallIdRef::Bytes(&[0x5a; 8])),
        timeout_ms: Some(5000),
    })
}

fn decode_call(c: &mut Criterion) {
    let args = call_args();
    let mut frame = Vec::new();
    call(&args).encode(&mut frame);
    let (frame_type, payload) = (frame[1], &frame[HEADER_LEN..]);
    let mut group = c.benchmark_group("wire");
    group.throughput(Throughput::Bytes(frame.len() as u64));
    group.bench_function("decode_call_100B", |b| {
        b.iter(|| Message::decode(black_box(frame_type), black_box(payload)))
    });
    group.finish();
}

fn encode_call(c: &mut Criterion) {
    let args = call_args();
    let msg = call(&args);
    let mut out = Vec::with_capacity(256);
    msg.encode(&mut out);
    let mut group = c.benchmark_group("wire");
    group.throughput(Throughput::Bytes(out.len() as u64));
    group.bench_function("encode_call_100B", |b| {
        b.iter(|| {
            out.clear();
            black_box(&msg).encode(&mut out);
            black_box(out.len())
        })
    });
    group.finish();
}

/// 1,000 PUBLISH frames of about 150 bytes each, as a subscriber's session would receive them.
fn frame_reader_many_frames(c: &mut Criterion) {
    let payload = [0x42u8; 64];
    let mut stream = Vec::new();
    for i in 0u32..1000 {
        let topic = format!("sensor.temp.room{}", i % 50);
        Message::Publish(Publish {
            topic: topic.as_bytes(),
            payload: &payload,
            qos: Some(0),
            retain: None,
            message_id: None,
            publisher: Some(NodeId([7; 32])),
        })
        .encode(&mut stream);
    }
    let mut reader = FrameReader::new(1 << 20);
    let mut group = c.benchmark_group("wire");
    group.throughput(Throughput::Bytes(stream.len() as u64));
    group.bench_function("frame_reader_many_frames", |b| {
        b.iter(|| {
            reader.push(black_box(&stream)).unwrap();
            let mut frames = 0usize;
            while let Some(frame) = reader.next_frame().unwrap() {
                frames += black_box(frame.payload).len();
            }
            frames
        })
    });
    group.finish();
}

criterion_group!(benches, decode_call, encode_call, frame_reader_many_frames);
criterion_main!(benches);
