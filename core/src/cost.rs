//! What moving the pending objects of a transfer will roughly cost: the plan-time drift warning's estimate.
//!
//! The prices are kept here, in code, so that plans work offline and the docs can show exactly what the
//! provider assumes ([`markdown_table`]). They are public list prices, on-demand, without free tiers or
//! volume discounts, for the first usage tier:
//!
//! - AWS (global regions): aws.amazon.com/s3/pricing (data transfer, requests), aws.amazon.com/sqs/pricing,
//!   aws.amazon.com/dynamodb/pricing/on-demand — us-east-1 list prices as of 2025-06 (DynamoDB on-demand after
//!   its November 2024 price cut).
//! - AWS China (Beijing, Ningxia): amazonaws.cn/en/s3/pricing, billed in CNY, converted at 7.2 CNY per USD.
//! - Aliyun OSS, Tencent COS, Qiniu Kodo: the vendors' public outbound-internet and GET prices (CNY, daytime
//!   rate), converted at 7.2 CNY per USD.
//!
//! Prices change and vary by region; the estimate is meant to tell "dollars" from "thousands of dollars", not to
//! replace the bill. EC2 time of the fleet is not included (it depends on throughput, not on the data).

use crate::config::SourceType;

/// CNY per USD used for prices billed in CNY.
pub const CNY_PER_USD: f64 = 7.2;
/// When the prices below were taken.
pub const PRICES_AS_OF: &str = "2025-06";

const GB: f64 = 1_073_741_824.0;

/// Internet egress tiers of global AWS regions: (up to this many GB per month, USD per GB).
const AWS_INTERNET_TIERS: [(f64, f64); 4] = [
    (10_240.0, 0.09),
    (51_200.0, 0.085),
    (153_600.0, 0.07),
    (f64::INFINITY, 0.05),
];
/// S3 → another global AWS region, USD per GB.
const AWS_INTER_REGION: f64 = 0.02;
/// China regions: internet egress CNY 0.933/GB; Beijing ↔ Ningxia CNY 0.6003/GB.
const CHINA_INTERNET: f64 = 0.933 / CNY_PER_USD;
const CHINA_INTER_REGION: f64 = 0.6003 / CNY_PER_USD;
/// S3 Standard requests, USD per 1,000: PUT/COPY/POST/LIST, GET/HEAD.
const AWS_PUT_PER_1000: f64 = 0.005;
const AWS_GET_PER_1000: f64 = 0.0004;
/// China: CNY 0.0405 per 1,000 PUT/LIST, CNY 0.0135 per 10,000 GET.
const CHINA_PUT_PER_1000: f64 = 0.0405 / CNY_PER_USD;
const CHINA_GET_PER_1000: f64 = 0.00135 / CNY_PER_USD;
/// Other clouds: outbound internet traffic per GB and GET requests per 1,000 (CNY 0.01 per 10,000).
const OSS_INTERNET: f64 = 0.50 / CNY_PER_USD;
const COS_INTERNET: f64 = 0.50 / CNY_PER_USD;
const KODO_INTERNET: f64 = 0.29 / CNY_PER_USD;
const VENDOR_GET_PER_1000: f64 = 0.001 / CNY_PER_USD;
/// SQS standard queue, USD per million requests; DynamoDB on-demand, USD per million write request units.
const SQS_PER_MILLION: f64 = 0.40;
const DYNAMODB_WRITE_PER_MILLION: f64 = 0.625;

/// How the engine packs work (dth-core's batch defaults): objects and bytes per job.
const OBJECTS_PER_JOB: u64 = 200;
const BYTES_PER_JOB: u64 = 64 * 1024 * 1024;
/// Per job: send (batched), receive, heartbeat, delete, plus empty long polls.
const SQS_REQUESTS_PER_JOB: f64 = 4.0;
/// Per job: the finished-job row, the run summary ADD, the upload/part rows of larger objects.
const LEDGER_WRITES_PER_JOB: f64 = 3.0;
/// A LIST page returns up to 1,000 keys; the finder lists both sides.
const KEYS_PER_LIST: f64 = 1000.0;

#[derive(Debug, Clone, PartialEq)]
pub struct CostEstimate {
    /// The total, USD.
    pub usd: f64,
    /// The parts adding up to it: ("egress", ..), ("requests", ..), ("queue+ledger", ..).
    pub lines: Vec<(String, f64)>,
}

fn is_china(region: &str) -> bool {
    region.starts_with("cn-")
}

fn tiered(gb: f64, tiers: &[(f64, f64)]) -> f64 {
    let mut left = gb;
    let mut below = 0.0;
    let mut usd = 0.0;
    for (upto, price) in tiers {
        if left <= 0.0 {
            break;
        }
        let in_tier = left.min(upto - below);
        usd += in_tier * price;
        left -= in_tier;
        below = *upto;
    }
    usd
}

/// USD per GB leaving the source for the destination, or None when unknown (a self-hosted store).
fn egress_usd(
    source_region: &str,
    source_type: SourceType,
    destination_region: &str,
    gb: f64,
) -> Option<f64> {
    Some(match source_type {
        SourceType::AliyunOss => gb * OSS_INTERNET,
        SourceType::TencentCos => gb * COS_INTERNET,
        SourceType::QiniuKodo => gb * KODO_INTERNET,
        SourceType::S3Compatible => return None,
        SourceType::AmazonS3 => {
            if source_region == destination_region {
                0.0
            } else {
                match (is_china(source_region), is_china(destination_region)) {
                    (false, false) => gb * AWS_INTER_REGION,
                    (true, true) => gb * CHINA_INTER_REGION,
                    // Between China and the rest of the world data crosses the internet.
                    (true, false) => gb * CHINA_INTERNET,
                    (false, true) => tiered(gb, &AWS_INTERNET_TIERS),
                }
            }
        }
    })
}

/// The estimated cost of moving `objects` objects of `bytes` bytes in total from `source_region` (a store of
/// `source_type`) to S3 in `destination_region`, with the control plane in the destination's partition.
pub fn estimate(
    source_region: &str,
    source_type: SourceType,
    destination_region: &str,
    objects: u64,
    bytes: u64,
) -> CostEstimate {
    let gb = bytes as f64 / GB;
    let n = objects as f64;
    let egress = egress_usd(source_region, source_type, destination_region, gb).unwrap_or(0.0);

    // Source: one GET per object (HEADs fold into it) and its share of LIST pages.
    let source_get = match source_type {
        SourceType::AmazonS3 if is_china(source_region) => CHINA_GET_PER_1000,
        SourceType::AmazonS3 => AWS_GET_PER_1000,
        SourceType::S3Compatible => 0.0,
        _ => VENDOR_GET_PER_1000,
    };
    let source_list = match source_type {
        SourceType::AmazonS3 if is_china(source_region) => CHINA_PUT_PER_1000,
        SourceType::AmazonS3 => AWS_PUT_PER_1000,
        _ => 0.0,
    };
    let (dest_put, dest_get) = if is_china(destination_region) {
        (CHINA_PUT_PER_1000, CHINA_GET_PER_1000)
    } else {
        (AWS_PUT_PER_1000, AWS_GET_PER_1000)
    };
    // Destination: one PUT per object (a lower bound: multipart objects add one per part), one HEAD to verify,
    // and the finder's LIST pages.
    let requests = n / 1000.0 * (source_get + dest_put + dest_get)
        + (n / KEYS_PER_LIST).ceil() / 1000.0 * (source_list + dest_put);

    let jobs = objects
        .div_ceil(OBJECTS_PER_JOB)
        .max(bytes.div_ceil(BYTES_PER_JOB))
        .min(objects.max(1));
    let jobs = if objects == 0 { 0 } else { jobs } as f64;
    let control = jobs * SQS_REQUESTS_PER_JOB / 1e6 * SQS_PER_MILLION
        + jobs * LEDGER_WRITES_PER_JOB / 1e6 * DYNAMODB_WRITE_PER_MILLION;

    let lines = vec![
        ("egress".to_owned(), egress),
        ("requests".to_owned(), requests),
        ("queue+ledger".to_owned(), control),
    ];
    CostEstimate {
        usd: lines.iter().map(|(_, v)| v).sum(),
        lines,
    }
}

impl CostEstimate {
    /// One sentence for the plan warning:
    /// "moving 1,200 objects / 3.4 GB from us-west-2 to cn-north-1 will cost about $0.31: egress $0.31, ...".
    pub fn describe(&self, objects: u64, bytes: u64, from: &str, to: &str) -> String {
        let parts: Vec<String> = self
            .lines
            .iter()
            .map(|(k, v)| format!("{k} {}", usd(*v)))
            .collect();
        format!(
            "moving {} objects / {} from {from} to {to} will cost about {}: {} (list prices of {PRICES_AS_OF}, EC2 \
             time not included)",
            thousands(objects),
            human_bytes(bytes),
            usd(self.usd),
            parts.join(", ")
        )
    }
}

fn usd(v: f64) -> String {
    if v > 0.0 && v < 0.01 {
        "<$0.01".into()
    } else {
        format!("${v:.2}")
    }
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Sizes in the units prices are given in (AWS's GB is 2^30 bytes).
fn human_bytes(b: u64) -> String {
    crate::stats::bytes_in(b, ["B", "KB", "MB", "GB", "TB", "PB"])
}

/// The price table, for the docs.
pub fn markdown_table() -> String {
    let rows: Vec<(&str, String)> = vec![
        (
            "S3 data transfer to another AWS region (global)",
            format!("${AWS_INTER_REGION:.4} / GB"),
        ),
        (
            "S3 data transfer out to the internet (global; e.g. to China)",
            AWS_INTERNET_TIERS
                .iter()
                .map(|(upto, p)| {
                    if upto.is_finite() {
                        format!("${p:.3} / GB up to {} TB", upto / 1024.0)
                    } else {
                        format!("${p:.3} / GB beyond")
                    }
                })
                .collect::<Vec<_>>()
                .join("; "),
        ),
        (
            "S3 data transfer out to the internet (China regions)",
            format!("${CHINA_INTERNET:.4} / GB (CNY 0.933)"),
        ),
        (
            "S3 data transfer Beijing ↔ Ningxia",
            format!("${CHINA_INTER_REGION:.4} / GB (CNY 0.6003)"),
        ),
        (
            "Aliyun OSS outbound internet traffic",
            format!("${OSS_INTERNET:.4} / GB (CNY 0.50)"),
        ),
        (
            "Tencent COS outbound internet traffic",
            format!("${COS_INTERNET:.4} / GB (CNY 0.50)"),
        ),
        (
            "Qiniu Kodo outbound internet traffic",
            format!("${KODO_INTERNET:.4} / GB (CNY 0.29)"),
        ),
        ("S3-compatible stores", "not estimated".into()),
        (
            "S3 PUT, COPY, POST, LIST requests (global)",
            format!("${AWS_PUT_PER_1000:.4} / 1,000"),
        ),
        (
            "S3 GET, HEAD requests (global)",
            format!("${AWS_GET_PER_1000:.4} / 1,000"),
        ),
        (
            "S3 PUT, LIST requests (China)",
            format!("${CHINA_PUT_PER_1000:.5} / 1,000 (CNY 0.0405)"),
        ),
        (
            "S3 GET requests (China)",
            format!("${CHINA_GET_PER_1000:.5} / 1,000 (CNY 0.0135 / 10,000)"),
        ),
        (
            "OSS / COS / Kodo GET requests",
            format!("${VENDOR_GET_PER_1000:.5} / 1,000 (CNY 0.01 / 10,000)"),
        ),
        (
            "SQS standard requests",
            format!("${SQS_PER_MILLION:.2} / million"),
        ),
        (
            "DynamoDB on-demand writes",
            format!("${DYNAMODB_WRITE_PER_MILLION:.3} / million write units"),
        ),
    ];
    let mut out = format!(
        "Prices assumed by the plan-time cost estimate (public list prices as of {PRICES_AS_OF}, first tier, \
         no free tier; CNY at {CNY_PER_USD} per USD):\n\n| item | price |\n|---|---|\n"
    );
    for (item, price) in rows {
        out.push_str(&format!("| {item} | {price} |\n"));
    }
    out.push_str(&format!(
        "\nRequests and control-plane calls are estimated from the object count: one GET and one HEAD at the \
         source and destination, one PUT per object (multipart objects add one per part), LIST pages of 1,000 keys \
         on both sides, one job per {OBJECTS_PER_JOB} objects or {} MiB with about {SQS_REQUESTS_PER_JOB} SQS \
         requests and {LEDGER_WRITES_PER_JOB} ledger writes each. EC2 time of the fleet is not included.\n",
        BYTES_PER_JOB / (1024 * 1024)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIB: u64 = 1024 * 1024 * 1024 * 1024;

    #[test]
    fn same_region_costs_only_requests() {
        let e = estimate(
            "us-east-1",
            SourceType::AmazonS3,
            "us-east-1",
            1_000_000,
            TIB,
        );
        assert_eq!(e.lines[0], ("egress".to_owned(), 0.0));
        // 1M PUTs at $0.005/1000 = $5, GETs and HEADs $0.80, LISTs a cent.
        let requests = e.lines[1].1;
        assert!((5.7..6.0).contains(&requests), "{requests}");
        assert!(e.usd > 5.0 && e.usd < 7.0, "{e:?}");
    }

    #[test]
    fn inter_region_and_cross_border_egress() {
        let gb100 = 100 * 1024 * 1024 * 1024;
        let inter = estimate("us-east-1", SourceType::AmazonS3, "eu-west-1", 1, gb100);
        assert!((inter.lines[0].1 - 2.0).abs() < 1e-9);
        let to_china = estimate("us-west-2", SourceType::AmazonS3, "cn-north-1", 1, gb100);
        assert!((to_china.lines[0].1 - 9.0).abs() < 1e-9);
        let from_china = estimate("cn-north-1", SourceType::AmazonS3, "us-east-1", 1, gb100);
        assert!((from_china.lines[0].1 - 100.0 * 0.933 / 7.2).abs() < 1e-9);
        let oss = estimate("cn-hangzhou", SourceType::AliyunOss, "cn-north-1", 1, gb100);
        assert!((oss.lines[0].1 - 100.0 * 0.5 / 7.2).abs() < 1e-9);
        let minio = estimate("local", SourceType::S3Compatible, "us-east-1", 1, gb100);
        assert_eq!(minio.lines[0].1, 0.0);
    }

    #[test]
    fn internet_tiers_add_up() {
        // 60 TB: 10 TB at 0.09, 40 TB at 0.085, 10 TB at 0.07.
        let gb = 60.0 * 1024.0;
        let want = 10_240.0 * 0.09 + 40_960.0 * 0.085 + 10_240.0 * 0.07;
        assert!((tiered(gb, &AWS_INTERNET_TIERS) - want).abs() < 1e-6);
    }

    #[test]
    fn nothing_to_move_costs_nothing() {
        let e = estimate("us-east-1", SourceType::AmazonS3, "cn-north-1", 0, 0);
        assert_eq!(e.usd, 0.0);
    }

    #[test]
    fn warning_sentence() {
        let e = estimate(
            "us-west-2",
            SourceType::AmazonS3,
            "cn-north-1",
            1200,
            3 * 1024 * 1024 * 1024,
        );
        let s = e.describe(1200, 3 * 1024 * 1024 * 1024, "us-west-2", "cn-north-1");
        assert!(
            s.starts_with(
                "moving 1,200 objects / 3.0 GB from us-west-2 to cn-north-1 will cost about $0.28"
            ),
            "{s}"
        );
        assert!(s.contains("egress $0.27"), "{s}");
        assert!(s.contains("queue+ledger <$0.01"), "{s}");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(human_bytes(512), "512 B");
    }

    #[test]
    fn table_lists_every_price() {
        let t = markdown_table();
        assert!(
            t.contains("| S3 data transfer to another AWS region (global) | $0.0200 / GB |"),
            "{t}"
        );
        assert!(t.contains("SQS"));
        assert!(t.contains(PRICES_AS_OF));
    }
}
