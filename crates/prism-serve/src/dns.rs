//! DNS in Consul's naming: `<service>.service.<domain>` answers SRV (port, weight, a
//! target per instance) and A/AAAA (addresses), healthy instances only;
//! `<tag>.<service>.service.<domain>` keeps those with the tag; RFC 2782's
//! `_<service>._<tag|tcp>.service.<domain>` works too. A target of an IP host is
//! `<hex address>.addr.<domain>`, answered with its address beside the SRV records.
//! Names under the domain that name nothing get NXDOMAIN; other names are refused.

use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use hickory_server::authority::MessageResponseBuilder;
use hickory_server::proto::op::{Header, MessageType, OpCode, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use prism_mesh::{InstanceStatus, Mesh, ServiceInstance};
use tracing::debug;

use crate::changes::Changes;

/// What a query gets.
#[derive(Debug, Default)]
struct Answer {
    code: Option<ResponseCode>,
    answers: Vec<Record>,
    additionals: Vec<Record>,
    /// The SOA in the authority section (empty answers and NXDOMAIN).
    soa: bool,
}

/// The DNS side of a gateway.
pub(crate) struct DnsHandler {
    mesh: Mesh,
    changes: Arc<Changes>,
    domain: LowerName,
    domain_name: Name,
    ttl: u32,
}

impl DnsHandler {
    pub(crate) fn new(mesh: Mesh, changes: Arc<Changes>, domain: &str, ttl: u32) -> Option<Self> {
        let name = Name::from_str(&format!("{domain}.")).ok()?;
        Some(DnsHandler {
            mesh,
            changes,
            domain: LowerName::from(&name),
            domain_name: name,
            ttl,
        })
    }

    fn soa(&self) -> Record {
        let name = |prefix: &str| {
            Name::from_str(prefix)
                .ok()
                .and_then(|p| p.append_domain(&self.domain_name).ok())
                .unwrap_or_else(|| self.domain_name.clone())
        };
        let serial = u32::try_from(self.changes.index() % u64::from(u32::MAX)).unwrap_or(0);
        Record::from_rdata(
            self.domain_name.clone(),
            self.ttl,
            RData::SOA(SOA::new(
                name("ns"),
                name("hostmaster"),
                serial,
                3600,
                600,
                86400,
                self.ttl,
            )),
        )
    }

    /// The instances of `service` (case-insensitively: DNS names are), healthy, with `tag`.
    fn healthy(&self, service: &str, tag: Option<&str>) -> Option<Vec<Arc<ServiceInstance>>> {
        let mut instances = self.mesh.discover(service);
        if instances.is_empty() {
            let name = self
                .mesh
                .services()
                .into_iter()
                .find(|s| s.eq_ignore_ascii_case(service))?;
            instances = self.mesh.discover(&name);
        }
        Some(
            instances
                .into_iter()
                .filter(|i| i.status == InstanceStatus::Healthy)
                .filter(|i| tag.is_none_or(|t| i.tags.iter().any(|x| x.eq_ignore_ascii_case(t))))
                .collect(),
        )
    }

    /// `<hex>.addr.<domain>` for an IP host.
    fn addr_name(&self, ip: IpAddr) -> Option<Name> {
        let hex: String = match ip {
            IpAddr::V4(v4) => v4.octets().iter().map(|b| format!("{b:02x}")).collect(),
            IpAddr::V6(v6) => v6.octets().iter().map(|b| format!("{b:02x}")).collect(),
        };
        Name::from_str(&format!("{hex}.addr"))
            .ok()?
            .append_domain(&self.domain_name)
            .ok()
    }

    fn address_record(&self, name: Name, ip: IpAddr) -> Record {
        match ip {
            IpAddr::V4(v4) => Record::from_rdata(name, self.ttl, RData::A(A(v4))),
            IpAddr::V6(v6) => Record::from_rdata(name, self.ttl, RData::AAAA(AAAA(v6))),
        }
    }

    fn answer(&self, name: &Name, qtype: RecordType) -> Answer {
        let lower = LowerName::from(name);
        if !self.domain.zone_of(&lower) {
            return Answer {
                code: Some(ResponseCode::Refused),
                ..Answer::default()
            };
        }
        let labels: Vec<String> = name
            .iter()
            .take(name.num_labels() as usize - self.domain_name.num_labels() as usize)
            .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
            .collect();
        let nxdomain = Answer {
            code: Some(ResponseCode::NXDomain),
            soa: true,
            ..Answer::default()
        };
        let empty = Answer {
            soa: true,
            ..Answer::default()
        };
        let parts: Vec<&str> = labels.iter().map(String::as_str).collect();
        match parts.as_slice() {
            [] => empty,
            [hex, "addr"] => match parse_hex_ip(hex) {
                Some(ip) if wants(qtype, ip) => Answer {
                    answers: vec![self.address_record(name.clone(), ip)],
                    ..Answer::default()
                },
                Some(_) => empty,
                None => nxdomain,
            },
            [service, "service"] => self.service_answer(name, service, None, qtype),
            [first, second, "service"] => match (first.strip_prefix('_'), second.strip_prefix('_'))
            {
                // RFC 2782: _<service>._<tag, or tcp for any>.service.<domain>
                (Some(service), Some(tag)) => {
                    let tag = (tag != "tcp").then_some(tag);
                    self.service_answer(name, service, tag, qtype)
                }
                // <tag>.<service>.service.<domain>
                (None, None) => self.service_answer(name, second, Some(first), qtype),
                _ => nxdomain,
            },
            _ => nxdomain,
        }
    }

    fn service_answer(
        &self,
        name: &Name,
        service: &str,
        tag: Option<&str>,
        qtype: RecordType,
    ) -> Answer {
        let Some(instances) = self.healthy(service, tag) else {
            return Answer {
                code: Some(ResponseCode::NXDomain),
                soa: true,
                ..Answer::default()
            };
        };
        let mut answer = Answer::default();
        for instance in &instances {
            let ip = instance.host.parse::<IpAddr>().ok();
            match qtype {
                RecordType::SRV | RecordType::ANY => {
                    let target = match ip {
                        Some(ip) => self.addr_name(ip),
                        None => Name::from_str(&format!("{}.", instance.host)).ok(),
                    };
                    let Some(target) = target else { continue };
                    let weight = u16::try_from(instance.weight.max(1)).unwrap_or(u16::MAX);
                    answer.answers.push(Record::from_rdata(
                        name.clone(),
                        self.ttl,
                        RData::SRV(SRV::new(1, weight, instance.port, target.clone())),
                    ));
                    if let Some(ip) = ip {
                        answer.additionals.push(self.address_record(target, ip));
                    }
                }
                RecordType::A | RecordType::AAAA => {
                    if let Some(ip) = ip.filter(|ip| wants(qtype, *ip)) {
                        answer.answers.push(self.address_record(name.clone(), ip));
                    }
                }
                _ => {}
            }
        }
        answer.soa = answer.answers.is_empty();
        answer
    }
}

fn wants(qtype: RecordType, ip: IpAddr) -> bool {
    matches!(
        (qtype, ip),
        (RecordType::A | RecordType::ANY, IpAddr::V4(_))
            | (RecordType::AAAA | RecordType::ANY, IpAddr::V6(_))
    )
}

fn parse_hex_ip(hex: &str) -> Option<IpAddr> {
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    match bytes?.as_slice() {
        [a, b, c, d] => Some(IpAddr::from([*a, *b, *c, *d])),
        v6 if v6.len() == 16 => <[u8; 16]>::try_from(v6).ok().map(IpAddr::from),
        _ => None,
    }
}

#[async_trait::async_trait]
impl RequestHandler for DnsHandler {
    async fn handle_request<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let builder = MessageResponseBuilder::from_message_request(request);
        let mut header = Header::response_from_request(request.header());
        header.set_authoritative(true);
        header.set_recursion_available(false);
        let info = match request.request_info() {
            Ok(info)
                if request.op_code() == OpCode::Query
                    && request.message_type() == MessageType::Query =>
            {
                info
            }
            _ => {
                let reply = builder.error_msg(request.header(), ResponseCode::NotImp);
                return match response.send_response(reply).await {
                    Ok(info) => info,
                    Err(_) => ResponseInfo::from(header),
                };
            }
        };
        let name: Name = info.query.name().into();
        let answer = self.answer(&name, info.query.query_type());
        debug!(%name, qtype = %info.query.query_type(), answers = answer.answers.len(), "dns query");
        if let Some(code) = answer.code {
            header.set_response_code(code);
        }
        if answer.code == Some(ResponseCode::Refused) {
            let reply = builder.error_msg(request.header(), ResponseCode::Refused);
            return match response.send_response(reply).await {
                Ok(info) => info,
                Err(_) => ResponseInfo::from(header),
            };
        }
        let soa = answer.soa.then(|| self.soa());
        let reply = builder.build(
            header,
            answer.answers.iter(),
            std::iter::empty(),
            soa.iter(),
            answer.additionals.iter(),
        );
        match response.send_response(reply).await {
            Ok(info) => info,
            Err(e) => {
                debug!(error = %e, "dns response not sent");
                ResponseInfo::from(header)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_addresses_read_back_as_the_address() {
        assert_eq!(parse_hex_ip("7f000001"), Some(IpAddr::from([127, 0, 0, 1])));
        assert_eq!(
            parse_hex_ip("00000000000000000000000000000001"),
            Some("::1".parse().unwrap())
        );
        assert_eq!(parse_hex_ip("7f0000"), None);
        assert_eq!(parse_hex_ip("zz000001"), None);
    }
}
