//! The shape of every operations-API answer, keys in the order they are sent: the views behind
//! `/api/v1` are typed structs, and this test keeps them byte-compatible with what clients
//! have always received (names, order, `null` against absent), whatever the values are.

use std::fmt;

use pedestal_tests::{TestBase, artifacts};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::json;

/// The body's shape: objects keep their keys in the order the body sends them, scalars become
/// their kind (`s`, `n`, `b`, `null`), and an array shows each distinct element shape once.
fn shape(body: &str) -> String {
    let mut deserializer = serde_json::Deserializer::from_str(body);
    deserializer.deserialize_any(ShapeVisitor).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

struct ShapeVisitor;

impl<'de> Visitor<'de> for ShapeVisitor {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<String, E> {
        Ok("b".into())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<String, E> {
        Ok("n".into())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<String, E> {
        Ok("n".into())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<String, E> {
        Ok("n".into())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<String, E> {
        Ok("s".into())
    }
    fn visit_unit<E: de::Error>(self) -> Result<String, E> {
        Ok("null".into())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<String, A::Error> {
        let mut elements: Vec<String> = Vec::new();
        while let Some(element) = seq.next_element_seed(ShapeSeed)? {
            if !elements.contains(&element) {
                elements.push(element);
            }
        }
        Ok(format!("[{}]", elements.join("|")))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<String, A::Error> {
        let mut fields = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(ShapeSeed)?;
            fields.push(format!("{key}:{value}"));
        }
        Ok(format!("{{{}}}", fields.join(",")))
    }
}

struct ShapeSeed;

impl<'de> de::DeserializeSeed<'de> for ShapeSeed {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        deserializer.deserialize_any(ShapeVisitor)
    }
}

/// Every answer of the scenario below, one `what status shape` line each.
struct Answers(Vec<String>);

impl Answers {
    fn record(&mut self, what: &str, reply: &pedestal_tests::Reply) {
        self.0.push(format!("{what} {} {}", reply.status, shape(&reply.body)));
    }
}

#[test]
fn every_answer_keeps_its_shape() {
    let base = TestBase::start();
    let mut answers = Answers(Vec::new());
    let mut record = |what: &str, reply: pedestal_tests::Reply| answers.record(what, &reply);
    let json = [("content-type", "application/json")];

    record("install", base.install(artifacts::ECHO));
    record("install-services", base.install(artifacts::SERVICES));
    record("install-good", base.install(artifacts::GOOD));
    record("install-again", base.install(artifacts::GOOD));
    record("list", base.admin_get("/api/v1/modules"));
    record("describe", base.admin_get("/api/v1/modules/fx-echo"));
    record("describe-missing", base.admin_get("/api/v1/modules/nothing"));
    record("limits", base.admin_get("/api/v1/modules/fx-echo/limits"));
    record("set-limits", base.put_limits("fx-echo", &json!({"max_concurrent_requests": 8})));
    record("traffic", base.admin_get("/api/v1/modules/fx-echo/traffic"));
    let weights = json!({"0.1.0": 100}).to_string();
    record(
        "set-traffic",
        base.admin("PUT", "/api/v1/modules/fx-echo/traffic", &json, Some(weights.as_bytes())),
    );
    let to = json!({"version": "0.1.0"}).to_string();
    record("switch", base.admin("POST", "/api/v1/modules/fx-echo/switch", &json, Some(to.as_bytes())));
    record("config", base.admin_get("/api/v1/modules/fx-services/config"));
    record("kv", base.admin_get("/api/v1/modules/fx-services/kv"));
    record("events", base.admin_get("/api/v1/events"));
    record("publish", base.admin("POST", "/api/v1/events/greetings", &json, Some(b"{\"hi\": 1}")));
    record("reload", base.admin("POST", "/api/v1/config/reload", &[], None));
    record("spis", base.admin_get("/api/v1/spis"));
    let args = json!(["hello"]).to_string();
    record(
        "spi-one",
        base.admin("POST", "/api/v1/spis/echo/echo?module=fx-echo", &json, Some(args.as_bytes())),
    );
    record("spi-all", base.admin("POST", "/api/v1/spis/echo/echo", &json, Some(args.as_bytes())));
    let fail = json!(["NO_STOCK"]).to_string();
    record("spi-all-failing", base.admin("POST", "/api/v1/spis/echo/fail", &json, Some(fail.as_bytes())));
    record("spi-none", base.admin("POST", "/api/v1/spis/nothing/echo", &json, Some(args.as_bytes())));
    record("logs", base.admin_get("/api/v1/modules/fx-echo/logs?tail=5"));
    record("health", base.admin_get("/api/v1/health"));
    record("ready", base.admin_get("/api/v1/ready"));
    record("base", base.admin_get("/api/v1/base"));
    record("retry-not-quarantined", base.admin("POST", "/api/v1/modules/fx-good/0.1.0/retry", &[], None));
    record("retry-bad-artifact", base.admin("POST", "/api/v1/artifacts/xyz/retry", &[], None));
    record("uninstall", base.uninstall("fx-good", "0.1.0"));
    let accepted = base.admin(
        "POST",
        "/api/v1/modules?async=true",
        &[("content-type", "application/octet-stream")],
        Some(&pedestal_tests::read(artifacts::GOOD)),
    );
    let id = accepted.json["operation"].as_u64().expect("an operation id");
    record("install-async", accepted);
    let operation =
        pedestal_tests::eventually("the install to end", std::time::Duration::from_secs(10), || {
            let reply = base.admin_get(&format!("/api/v1/operations/{id}"));
            (reply.json["status"] != "running").then_some(reply)
        });
    record("operation", operation);
    record("no-route", base.admin_get("/api/v1/nothing"));
    record("wrong-method", base.admin("DELETE", "/api/v1/health", &[], None));

    let found = answers.0.join("\n");
    assert_eq!(found, EXPECTED.trim(), "the answers' shapes changed:\n{found}");
}

const EXPECTED: &str = r#"
install 201 {install_ms:n,interface_version:s,name:s,package:s,replaced:null,sha256:s,signed_by:null,size:n,state:s,version:s}
install-services 201 {install_ms:n,interface_version:s,name:s,package:s,replaced:null,sha256:s,signed_by:null,size:n,state:s,version:s}
install-good 201 {install_ms:n,interface_version:s,name:s,package:s,replaced:null,sha256:s,signed_by:null,size:n,state:s,version:s}
install-again 409 {code:s,details:{module:s},message:s}
list 200 {modules:[{active:b,cpu:{system_ms:n,threads:n,user_ms:n},heap:{allocated_bytes:n,allocations:n,frees:n,live_bytes:n},heap_peak_bytes:n,history:[],install_ms:n,installed_at:s,interface_version:s,leaked_bytes:null,limits:{max_concurrent_requests:null,max_request_body_bytes:n,memory_action:s,memory_soft_limit_bytes:null,request_timeout_ms:n,runaway_after_ms:n,sources:{max_concurrent_requests:s,max_request_body_bytes:s,memory_action:s,memory_soft_limit_bytes:s,request_timeout_ms:s,unhealthy_action:s,unhealthy_grace_ms:s},unhealthy_action:s,unhealthy_grace_ms:n},load_ms:n,mapped:b,name:s,over_memory_limit:b,package:s,provides:{echo:s},requires:{},runaway_requests:[],sha256:s,signed_by:null,start_ms:n,state:s,tasks:n,traffic:{client_errors:n,in_flight:n,latency:null,panics:n,recent:{requests:n,seconds:n,server_errors:n},rejected:n,requests:n,server_errors:n},version:s}|{active:b,cpu:{system_ms:n,threads:n,user_ms:n},heap:{allocated_bytes:n,allocations:n,frees:n,live_bytes:n},heap_peak_bytes:n,history:[],install_ms:n,installed_at:s,interface_version:s,leaked_bytes:null,limits:{max_concurrent_requests:null,max_request_body_bytes:n,memory_action:s,memory_soft_limit_bytes:null,request_timeout_ms:n,runaway_after_ms:n,sources:{max_concurrent_requests:s,max_request_body_bytes:s,memory_action:s,memory_soft_limit_bytes:s,request_timeout_ms:s,unhealthy_action:s,unhealthy_grace_ms:s},unhealthy_action:s,unhealthy_grace_ms:n},load_ms:n,mapped:b,name:s,over_memory_limit:b,package:s,provides:{},requires:{},runaway_requests:[],sha256:s,signed_by:null,start_ms:n,state:s,tasks:n,traffic:{client_errors:n,in_flight:n,latency:null,panics:n,recent:{requests:n,seconds:n,server_errors:n},rejected:n,requests:n,server_errors:n},version:s}],quarantined:[]}
describe 200 {active_version:s,crashes:[],name:s,quarantined:[],retired:[],versions:[{active:b,cpu:{system_ms:n,threads:n,user_ms:n},heap:{allocated_bytes:n,allocations:n,frees:n,live_bytes:n},heap_peak_bytes:n,history:[{at:s,message:s,reason:s,state:s}],install_ms:n,installed_at:s,interface_version:s,leaked_bytes:null,limits:{max_concurrent_requests:null,max_request_body_bytes:n,memory_action:s,memory_soft_limit_bytes:null,request_timeout_ms:n,runaway_after_ms:n,sources:{max_concurrent_requests:s,max_request_body_bytes:s,memory_action:s,memory_soft_limit_bytes:s,request_timeout_ms:s,unhealthy_action:s,unhealthy_grace_ms:s},unhealthy_action:s,unhealthy_grace_ms:n},load_ms:n,mapped:b,name:s,over_memory_limit:b,package:s,provides:{echo:s},requires:{},runaway_requests:[],sha256:s,signed_by:null,start_ms:n,state:s,tasks:n,traffic:{client_errors:n,in_flight:n,latency:null,panics:n,recent:{requests:n,seconds:n,server_errors:n},rejected:n,requests:n,server_errors:n},version:s}]}
describe-missing 404 {code:s,details:{},message:s}
limits 200 {module:s,overrides:{max_concurrent_requests:null,max_request_body_bytes:null,memory_action:null,memory_soft_limit_bytes:null,request_timeout_ms:null,unhealthy_action:null,unhealthy_grace_ms:null},versions:[{declared:b,limits:{max_concurrent_requests:null,max_request_body_bytes:n,memory_action:s,memory_soft_limit_bytes:null,request_timeout_ms:n,runaway_after_ms:n,sources:{max_concurrent_requests:s,max_request_body_bytes:s,memory_action:s,memory_soft_limit_bytes:s,request_timeout_ms:s,unhealthy_action:s,unhealthy_grace_ms:s},unhealthy_action:s,unhealthy_grace_ms:n},version:s}]}
set-limits 200 {module:s,overrides:{max_concurrent_requests:n,max_request_body_bytes:null,memory_action:null,memory_soft_limit_bytes:null,request_timeout_ms:null,unhealthy_action:null,unhealthy_grace_ms:null},versions:[{declared:b,limits:{max_concurrent_requests:n,max_request_body_bytes:n,memory_action:s,memory_soft_limit_bytes:null,request_timeout_ms:n,runaway_after_ms:n,sources:{max_concurrent_requests:s,max_request_body_bytes:s,memory_action:s,memory_soft_limit_bytes:s,request_timeout_ms:s,unhealthy_action:s,unhealthy_grace_ms:s},unhealthy_action:s,unhealthy_grace_ms:n},version:s}]}
traffic 200 {active_version:s,module:s,weights:null}
set-traffic 200 {active_version:s,module:s,weights:{0.1.0:n}}
switch 200 {active_version:s,name:s,previous_version:null,switch_ms:n}
config 200 {file:null,module:s,redacted:[],values:{}}
kv 200 {module:s,usage:{keys:n,quota_bytes:n,used_bytes:n}}
events 200 {delivered:n,published:n,topics:{greetings:n}}
publish 200 {queued:n,topic:s}
reload 200 {changed:[]}
spis 200 {declared:{},implemented:{echo:[{active:b,module:s,spi_version:s}]},required:{}}
spi-one 200 {module:s,result:{by:s,length:n,text:s}}
spi-all 200 {results:[{module:s,result:{by:s,length:n,text:s}}]}
spi-all-failing 200 {results:[{error:{code:s,message:s},module:s}]}
spi-none 503 {code:s,details:{},message:s}
logs 200 {file:s,lines:[],module:s}
health 200 {counts:{active:n,broken:n,inactive:n,pinned:n,quarantined:n,stopped:n},crash_table:{capacity:n,in_use:n},crashes:[],interface_version:s,modules:[{active:b,hook:{message:s,ms:n,outcome:s,status:s},module:s,reasons:[],recent:{error_rate:n,requests:n,seconds:n,server_errors:n},runaway_requests:[],state:s,status:s,tasks:n,version:s}],problems:[],ready:b,status:s,tls_keys_reclaimable:b}
ready 200 {ready:b}
base 200 {pid:n,supervised:b,supervisor_pid:n,worker_generation:n,started_at:s,worker_restart_available:b}
retry-not-quarantined 404 {code:s,details:{},message:s}
retry-bad-artifact 422 {code:s,details:{},message:s}
uninstall 200 {active:b,active_version:null,cpu:{system_ms:n,threads:n,user_ms:n},heap:null,heap_peak_bytes:n,history:[{at:s,message:s,reason:s,state:s}],install_ms:n,installed_at:s,interface_version:s,leaked_bytes:n,limits:{max_concurrent_requests:null,max_request_body_bytes:n,memory_action:s,memory_soft_limit_bytes:null,request_timeout_ms:n,runaway_after_ms:n,sources:{max_concurrent_requests:s,max_request_body_bytes:s,memory_action:s,memory_soft_limit_bytes:s,request_timeout_ms:s,unhealthy_action:s,unhealthy_grace_ms:s},unhealthy_action:s,unhealthy_grace_ms:n},load_ms:n,mapped:b,name:s,over_memory_limit:b,package:s,provides:{},requires:{},runaway_requests:[],sha256:s,signed_by:null,start_ms:n,state:s,tasks:null,traffic:{client_errors:n,in_flight:n,latency:null,panics:n,recent:{requests:n,seconds:n,server_errors:n},rejected:n,requests:n,server_errors:n},version:s}
install-async 202 {operation:n,status_url:s}
operation 200 {id:n,kind:s,target:s,status:s,started_at:s,duration_ms:n,result:{install_ms:n,interface_version:s,name:s,package:s,replaced:null,sha256:s,signed_by:null,size:n,state:s,version:s},error:null}
no-route 404 {code:s,details:{},message:s}
wrong-method 405 {code:s,details:{},message:s}
"#;
