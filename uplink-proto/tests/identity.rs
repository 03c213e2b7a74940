//! Standard identity: what a signed token's claims are worth. The signature is the adapter's; these are the
//! decisions after it, against a reference model of each.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use serde_json::json;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use uplink_proto::gateway::Role;
use uplink_proto::gateway::auth_limit::AuthSource;
use uplink_proto::gateway::identity::{
    AccessCheck, Claims, DeviceGrant, DevicePoll, KeyRefresh, LEEWAY_SECS, MCP_SCOPE, PendingSignIns, People,
    PersonRule, SignInCheck, SignInRefusal, Subject, TokenRefusal, Who, api_resource, identity_of, issuer_allowed,
    mcp_resource, resource_metadata, resource_metadata_url, signing_alg_allowed,
};
use uplink_proto::time::Instant;

const ISSUER: &str = "https://id.example";
const PUBLIC: &str = "https://gw.example";
const NOW: i64 = 1_800_000_000;

fn claims(project: &str) -> Claims {
    Claims {
        iss: ISSUER.into(),
        sub: "u-1".into(),
        aud: vec![mcp_resource(PUBLIC, project)],
        exp: Some(NOW + 300),
        iat: Some(NOW - 1),
        scopes: vec!["openid".into(), MCP_SCOPE.into()],
        groups: vec!["oncall".into()],
        ..Claims::default()
    }
}

fn people() -> People {
    People::new(vec!["group:oncall=approver".parse().unwrap(), "group:readers=viewer".parse().unwrap()])
}

fn check(claims: &Claims, project: &str, people: &People) -> Result<(Subject, Role), TokenRefusal> {
    let issuers = [ISSUER.to_owned()];
    let resource = mcp_resource(PUBLIC, project);
    AccessCheck::mcp(&issuers, &resource, people).check(claims, NOW)
}

#[test]
fn a_token_for_this_endpoint_with_its_scope_and_a_mapped_role_relays() {
    let (subject, role) = check(&claims("web"), "web", &people()).unwrap();
    assert_eq!(role, Role::Approver);
    assert_eq!(subject.principal(), "https://id.example#u-1");
    assert_eq!(subject.email, None);
}

#[test]
fn each_wrong_part_of_a_token_is_refused_with_its_reason() {
    let p = people();
    let refusal = |edit: &dyn Fn(&mut Claims)| {
        let mut c = claims("web");
        edit(&mut c);
        check(&c, "web", &p).unwrap_err()
    };
    assert_eq!(refusal(&|c| c.iss = "https://other.example".into()), TokenRefusal::Issuer);
    assert_eq!(refusal(&|c| c.aud = vec![mcp_resource(PUBLIC, "api")]), TokenRefusal::Audience);
    assert_eq!(refusal(&|c| c.aud = vec!["https://elsewhere.example/mcp".into()]), TokenRefusal::Audience);
    assert_eq!(refusal(&|c| c.aud.clear()), TokenRefusal::Audience);
    assert_eq!(refusal(&|c| c.exp = None), TokenRefusal::Malformed("exp"));
    assert_eq!(refusal(&|c| c.exp = Some(NOW - LEEWAY_SECS)), TokenRefusal::Expired);
    assert_eq!(refusal(&|c| c.nbf = Some(NOW + LEEWAY_SECS + 1)), TokenRefusal::NotYetValid);
    assert_eq!(refusal(&|c| c.iat = Some(NOW + LEEWAY_SECS + 1)), TokenRefusal::NotYetValid);
    assert_eq!(refusal(&|c| c.sub.clear()), TokenRefusal::NoSubject);
    assert_eq!(refusal(&|c| c.scopes = vec!["mcp:read".into(), "MCP".into()]), TokenRefusal::Scope);
    assert_eq!(refusal(&|c| c.groups = vec!["Oncall".into()]), TokenRefusal::Unmapped);
    assert_eq!(refusal(&|c| c.groups = vec!["readers".into()]), TokenRefusal::Role(Role::Viewer));
    // Within the clock skew either way.
    let mut c = claims("web");
    c.exp = Some(NOW - LEEWAY_SECS + 1);
    c.nbf = Some(NOW + LEEWAY_SECS);
    assert!(check(&c, "web", &p).is_ok());
    // What each refusal answers.
    assert_eq!((TokenRefusal::Audience.status(), TokenRefusal::Audience.error_code()), (401, "invalid_token"));
    assert_eq!((TokenRefusal::Scope.status(), TokenRefusal::Scope.error_code()), (403, "insufficient_scope"));
    assert_eq!(TokenRefusal::Unmapped.status(), 403);
}

#[test]
fn claims_are_read_as_providers_write_them() {
    let payload = json!({
        "iss": ISSUER, "sub": "u-1", "aud": "https://gw.example/api/sleds/web/mcp", "exp": 1.8e9, "iat": 1_700_000_000,
        "scope": "openid  mcp", "email": "Ana@Example.com", "email_verified": "true", "roles": ["oncall"],
    });
    let c = Claims::from_json(&payload, "roles").unwrap();
    assert_eq!(c.aud, vec!["https://gw.example/api/sleds/web/mcp"]);
    assert_eq!(c.exp, Some(1_800_000_000));
    assert_eq!(c.scopes, vec!["openid", "mcp"]);
    assert_eq!(c.groups, vec!["oncall"]);
    assert!(c.email_verified);
    // Entra's and Okta's `scp`, as a list or a string.
    let scp = Claims::from_json(&json!({"scp": ["mcp"]}), "groups").unwrap();
    assert_eq!(scp.scopes, vec!["mcp"]);
    assert_eq!(Claims::from_json(&json!({"scp": "a mcp"}), "groups").unwrap().scopes, vec!["a", "mcp"]);
    // Wrong shapes and budgets.
    assert_eq!(Claims::from_json(&json!([1]), "groups"), Err(TokenRefusal::Malformed("the payload is not an object")));
    assert_eq!(Claims::from_json(&json!({"sub": 7}), "groups"), Err(TokenRefusal::Malformed("sub")));
    assert_eq!(Claims::from_json(&json!({"exp": "soon"}), "groups"), Err(TokenRefusal::Malformed("exp")));
    assert_eq!(Claims::from_json(&json!({"aud": [1]}), "groups"), Err(TokenRefusal::Malformed("aud")));
    let many: Vec<String> = (0..1025).map(|i| format!("g{i}")).collect();
    assert_eq!(Claims::from_json(&json!({"groups": many}), "groups"), Err(TokenRefusal::TooLarge("groups")));
}

#[test]
fn person_rules_parse_and_refuse_what_they_cannot_mean() {
    let r: PersonRule = "email:ana@example.com=admin".parse().unwrap();
    assert_eq!((r.who, r.role, r.issuer), (Who::Email("ana@example.com".into()), Role::Admin, None));
    let r: PersonRule = "group:a=b=viewer".parse().unwrap();
    assert_eq!(r.who, Who::Group("a=b".into()));
    for bad in ["group:oncall", "group:=admin", "team:x=admin", "oncall=admin", "group:x=root", "sub:x=Admin"] {
        assert!(bad.parse::<PersonRule>().is_err(), "{bad}");
    }
}

#[test]
fn an_unverified_email_gives_no_role() {
    let people = People::new(vec!["email:ana@example.com=admin".parse().unwrap()]);
    let mut c = claims("web");
    c.email = Some("ANA@example.com".into());
    assert_eq!(people.role_of(&c), None);
    c.email_verified = true;
    assert_eq!(people.role_of(&c), Some(Role::Admin));
}

#[test]
fn a_rule_bound_to_an_issuer_matches_only_its_tokens() {
    let mut rule: PersonRule = "sub:u-1=approver".parse().unwrap();
    rule.issuer = Some("https://other.example".into());
    let people = People::new(vec![rule]);
    assert_eq!(people.role_of(&claims("web")), None);
}

#[test]
fn only_asymmetric_signatures_are_accepted() {
    for alg in ["RS256", "PS384", "ES256", "ES384", "EdDSA"] {
        assert!(signing_alg_allowed(alg), "{alg}");
    }
    for alg in ["none", "HS256", "HS512", "rs256", "", "ES512K"] {
        assert!(!signing_alg_allowed(alg), "{alg}");
    }
}

#[test]
fn an_unknown_key_fetches_the_keys_again_at_most_every_ten_seconds() {
    let mut keys = KeyRefresh::default();
    let t = Instant::from_secs(100);
    assert!(keys.due(t, false), "never fetched");
    keys.fetched(t);
    assert!(!keys.due(Instant::from_secs(109), true));
    assert!(keys.due(Instant::from_secs(110), true));
    assert!(!keys.due(Instant::from_secs(110), false), "known keys are kept for an hour");
    assert!(keys.due(Instant::from_secs(100 + 3600), false));
}

#[test]
fn issuers_are_https_or_loopback_http() {
    for good in [
        "https://id.example",
        "https://id.example/realms/a",
        "http://127.0.0.1:9000",
        "http://localhost:1",
        "http://[::1]:8",
    ] {
        assert!(issuer_allowed(good), "{good}");
    }
    for bad in [
        "http://id.example",
        "https://id.example?x=1",
        "https://id.example#f",
        "ftp://x",
        "https://",
        "https://u@id.example",
        "id.example",
        "http://127.0.0.1.evil.example",
    ] {
        assert!(!issuer_allowed(bad), "{bad}");
    }
}

#[test]
fn the_resource_and_its_metadata_name_the_project_as_one_segment() {
    assert_eq!(mcp_resource("https://gw.example/", "team-a/web"), "https://gw.example/api/sleds/team-a%2Fweb/mcp");
    assert_eq!(
        resource_metadata_url(PUBLIC, "web"),
        "https://gw.example/.well-known/oauth-protected-resource/api/sleds/web/mcp"
    );
    let m = resource_metadata(PUBLIC, "web", &[ISSUER.to_owned()]);
    assert_eq!(m["resource"], "https://gw.example/api/sleds/web/mcp");
    assert_eq!(m["authorization_servers"], json!([ISSUER]));
    assert_eq!(m["scopes_supported"], json!(["mcp"]));
}

#[test]
fn a_person_signs_in_with_an_id_token_for_this_client_and_this_sign_in() {
    let people = people();
    let id_token = Claims {
        iss: ISSUER.into(),
        sub: "u-1".into(),
        aud: vec!["uplink".into()],
        exp: Some(NOW + 300),
        iat: Some(NOW),
        nonce: Some("n-1".into()),
        ..Claims::default()
    };
    // The groups and a verified email come from UserInfo, about the same subject.
    let info = Claims {
        sub: "u-1".into(),
        groups: vec!["oncall".into()],
        email: Some("ana@example.com".into()),
        email_verified: true,
        ..Claims::default()
    };
    let claims = id_token.clone().with_userinfo(info.clone()).unwrap();
    let check = SignInCheck { issuer: ISSUER, client_id: "uplink", nonce: "n-1", people: &people, leeway: LEEWAY_SECS };
    let (subject, role) = check.check(&claims, NOW).unwrap();
    assert_eq!((subject.principal().as_str(), role), ("https://id.example#u-1", Role::Approver));
    assert_eq!(subject.email.as_deref(), Some("ana@example.com"));
    let other = Claims { sub: "u-2".into(), ..info };
    assert!(id_token.clone().with_userinfo(other).is_err(), "UserInfo about another person");

    let refusal = |edit: &dyn Fn(&mut Claims)| {
        let mut c = claims.clone();
        edit(&mut c);
        check.check(&c, NOW).unwrap_err()
    };
    assert_eq!(refusal(&|c| c.aud = vec!["another-client".into()]), TokenRefusal::Audience);
    assert_eq!(refusal(&|c| c.aud.push("another".into())), TokenRefusal::Audience, "several audiences, no azp");
    assert_eq!(refusal(&|c| c.nonce = Some("n-2".into())), TokenRefusal::Nonce, "another sign-in's token");
    assert_eq!(refusal(&|c| c.nonce = None), TokenRefusal::Nonce);
    assert_eq!(refusal(&|c| c.exp = Some(NOW - 61)), TokenRefusal::Expired);
    assert_eq!(refusal(&|c| c.iss = "https://other.example".into()), TokenRefusal::Issuer);
    assert_eq!(refusal(&|c| c.groups = vec!["marketing".into()]), TokenRefusal::Unmapped);
    let mut several = claims.clone();
    several.aud.push("another".into());
    several.azp = Some("uplink".into());
    assert!(check.check(&several, NOW).is_ok(), "several audiences, this client authorized");
}

#[test]
fn a_sign_in_finishes_once_in_time_in_the_browser_that_began_it() {
    let mut table = PendingSignIns::default();
    let t = Instant::from_secs(100);
    let (state, browser, other) = ([1u8; 32], [7u8; 32], [8u8; 32]);
    table.begin(t, None, state, "n".into(), "v".into(), browser);
    let done = table.finish(t, &state, Some(&browser)).unwrap();
    assert_eq!((done.nonce.as_str(), done.verifier.as_str()), ("n", "v"));
    assert_eq!(table.finish(t, &state, Some(&browser)), Err(SignInRefusal::Unknown), "a replayed callback");
    table.begin(t, None, state, "n".into(), "v".into(), browser);
    assert_eq!(table.finish(t, &state, Some(&other)), Err(SignInRefusal::OtherBrowser));
    assert_eq!(table.finish(t, &state, Some(&browser)), Err(SignInRefusal::Unknown), "one try per sign-in");
    table.begin(t, None, state, "n".into(), "v".into(), browser);
    assert_eq!(table.finish(t, &state, None), Err(SignInRefusal::OtherBrowser), "no binding cookie");
    table.begin(t, None, state, "n".into(), "v".into(), browser);
    let late = t.saturating_add(PendingSignIns::TTL);
    assert_eq!(table.finish(late, &state, Some(&browser)), Err(SignInRefusal::Expired));
    // A person's sign-in under way from one address; a flood from another (a whole IPv6 /64 counting as
    // one) pushes out only its own: it keeps at most PER_SOURCE of them, the newest.
    let person = Some(AuthSource::of(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7))));
    let key = |i: u64| {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&i.to_be_bytes());
        key
    };
    table.begin(Instant::from_secs(200), person, key(u64::MAX), String::new(), String::new(), browser);
    for i in 0..(PendingSignIns::MAX as u64 + 10) {
        let flooder = Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, i as u16);
        let at = Instant::from_secs(200 + i / 100);
        table.begin(at, Some(AuthSource::of(IpAddr::V6(flooder))), key(i), String::new(), String::new(), browser);
    }
    assert_eq!(table.len(), 1 + PendingSignIns::PER_SOURCE);
    let newest = key(PendingSignIns::MAX as u64 + 9);
    assert!(table.finish(Instant::from_secs(300), &newest, Some(&browser)).is_ok());
    assert!(
        table.finish(Instant::from_secs(300), &key(u64::MAX), Some(&browser)).is_ok(),
        "the person's was pushed out"
    );
    // Many sources at once fill the table: what makes room comes from whoever holds the most.
    let mut table = PendingSignIns::default();
    table.begin(Instant::from_secs(200), person, key(u64::MAX), String::new(), String::new(), browser);
    for i in 0..(PendingSignIns::MAX as u64 + 10) {
        let source = AuthSource::of(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + (i as u32 % 200))));
        table.begin(Instant::from_secs(200 + i / 100), Some(source), key(i), String::new(), String::new(), browser);
    }
    assert_eq!(table.len(), PendingSignIns::MAX);
    assert!(
        table.finish(Instant::from_secs(300), &key(u64::MAX), Some(&browser)).is_ok(),
        "the person's was pushed out"
    );
}

#[test]
fn an_api_token_lets_any_role_in_and_is_no_good_at_an_mcp_endpoint() {
    let issuers = [ISSUER.to_owned()];
    let (api, mcp) = (api_resource(PUBLIC), mcp_resource(PUBLIC, "web"));
    assert_eq!(api, "https://gw.example/api");
    let people = people();
    let mut c = claims("web");
    c.aud = vec![api.clone()];
    c.scopes.clear();
    c.groups = vec!["readers".into()];
    assert_eq!(AccessCheck::api(&issuers, &api, &people).check(&c, NOW).unwrap().1, Role::Viewer, "no scope needed");
    assert_eq!(AccessCheck::mcp(&issuers, &mcp, &people).check(&c, NOW), Err(TokenRefusal::Audience));
    // And an MCP endpoint's token is no good at the API.
    let m = claims("web");
    assert_eq!(AccessCheck::api(&issuers, &api, &people).check(&m, NOW), Err(TokenRefusal::Audience));
    c.groups.clear();
    assert_eq!(AccessCheck::api(&issuers, &api, &people).check(&c, NOW), Err(TokenRefusal::Unmapped));
}

#[test]
fn a_device_sign_in_polls_at_the_interval_slows_down_when_told_and_ends_in_time() {
    let t = Instant::from_secs(1000);
    let mut grant = DeviceGrant::new(t, 60, Some(2));
    assert_eq!(grant.first(t), DevicePoll::At(Instant::from_secs(1002)));
    assert_eq!(
        grant.answered(Instant::from_secs(1002), "authorization_pending"),
        DevicePoll::At(Instant::from_secs(1004))
    );
    assert_eq!(
        grant.answered(Instant::from_secs(1004), "slow_down"),
        DevicePoll::At(Instant::from_secs(1011)),
        "5 s more"
    );
    assert_eq!(
        grant.answered(Instant::from_secs(1011), "authorization_pending"),
        DevicePoll::At(Instant::from_secs(1018)),
        "for good"
    );
    assert_eq!(
        grant.answered(Instant::from_secs(1055), "authorization_pending"),
        DevicePoll::Expired,
        "not past the code's end"
    );
    assert_eq!(grant.answered(t, "access_denied"), DevicePoll::Denied);
    assert_eq!(grant.answered(t, "expired_token"), DevicePoll::Expired);
    assert_eq!(grant.answered(t, "invalid_client"), DevicePoll::Failed);
    // No interval named: 5 s; a zero one: at least a second; a day-long code: at most half an hour.
    assert_eq!(DeviceGrant::new(t, 60, None).first(t), DevicePoll::At(Instant::from_secs(1005)));
    assert_eq!(DeviceGrant::new(t, 60, Some(0)).first(t), DevicePoll::At(Instant::from_secs(1001)));
    let mut long = DeviceGrant::new(t, 86_400, Some(1));
    assert_eq!(long.answered(Instant::from_secs(1000 + 1800), "authorization_pending"), DevicePoll::Expired);
}

#[test]
fn only_a_trusted_issuers_identity_is_one() {
    let issuers = [ISSUER.to_owned()];
    assert!(identity_of(&issuers, "https://id.example#u-1"));
    assert!(identity_of(&issuers, "https://id.example#u#1"), "a subject may hold #");
    for not in [
        "https://id.example#",
        "https://id.example",
        "https://other.example#u-1",
        "ana",
        "#u-1",
        "https://id.example/x#u",
    ] {
        assert!(!identity_of(&issuers, not), "{not}");
    }
}

/// A reference model of [`People::role_of`]: each rule's condition written out on its own.
fn model_role(rules: &[(Option<bool>, u8, String, Role)], c: &Claims) -> Option<Role> {
    let mut best = None;
    for (issuer_ok, kind, value, role) in rules {
        if *issuer_ok == Some(false) {
            continue;
        }
        let hit = match kind {
            0 => c.sub == *value && !value.is_empty(),
            1 => {
                c.email_verified && c.email.as_deref().map(str::to_ascii_lowercase) == Some(value.to_ascii_lowercase())
            }
            _ => c.groups.contains(value),
        };
        if hit && best.is_none_or(|b| *role > b) {
            best = Some(*role);
        }
    }
    best
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Viewer), Just(Role::Approver), Just(Role::Admin)]
}

fn word() -> impl Strategy<Value = String> {
    prop_oneof![Just("a".to_owned()), Just("A".to_owned()), Just("b".to_owned()), Just(String::new())]
}

proptest! {
    /// No role without a rule that names this identity (its subject, its verified email, one of its groups)
    /// for its issuer; the highest such rule's role otherwise.
    #[test]
    fn a_role_only_from_a_rule_that_names_the_identity(
        rules in prop::collection::vec((prop::option::of(any::<bool>()), 0u8..3, word(), role()), 0..6),
        sub in word(), email in prop::option::of(word()), verified in any::<bool>(),
        groups in prop::collection::vec(word(), 0..3),
    ) {
        let c = Claims { iss: ISSUER.into(), sub, email, email_verified: verified, groups, ..Claims::default() };
        let built: Vec<PersonRule> = rules.iter().map(|(issuer, kind, value, role)| PersonRule {
            issuer: issuer.map(|same| if same { ISSUER.into() } else { "https://other.example".into() }),
            who: match kind { 0 => Who::Subject(value.clone()), 1 => Who::Email(value.clone()), _ => Who::Group(value.clone()) },
            role: *role,
        }).collect();
        prop_assert_eq!(People::new(built).role_of(&c), model_role(&rules, &c));
        prop_assert_eq!(People::default().role_of(&c), None);
    }

    /// A token relays MCP only with the very scope `mcp` among its scopes, only to the project whose
    /// endpoint it names, and only with a role that may decide.
    #[test]
    fn a_scope_grants_only_its_right_and_an_audience_only_its_project(
        scopes in prop::collection::vec(prop_oneof![Just("mcp"), Just("mcp:read"), Just("MCP"), Just("openid"), Just("mcp "), Just("")], 0..4),
        for_project in prop_oneof![Just("web"), Just("web2"), Just("team/web"), Just("team%2Fweb")],
        at_project in prop_oneof![Just("web"), Just("web2"), Just("team/web"), Just("team%2Fweb")],
        group in prop_oneof![Just("oncall"), Just("readers"), Just("nobody")],
    ) {
        let mut c = claims(for_project);
        c.scopes = scopes.iter().map(|s| (*s).to_owned()).collect();
        c.groups = vec![group.to_owned()];
        let ok = check(&c, at_project, &people()).is_ok();
        let expected = scopes.contains(&"mcp") && for_project == at_project && group == "oncall";
        prop_assert_eq!(ok, expected);
    }

    /// Two projects never share an endpoint URL, so a token's audience names one project only.
    #[test]
    fn distinct_projects_have_distinct_resources(a in "[a-z/%. ~-]{0,6}", b in "[a-z/%. ~-]{0,6}") {
        prop_assert_eq!(mcp_resource(PUBLIC, &a) == mcp_resource(PUBLIC, &b), a == b);
    }

    /// Distinct identities (an issuer, which is a URL without `#`, and a subject) are distinct principals.
    #[test]
    fn distinct_identities_are_distinct_principals(
        i in prop_oneof![Just("https://a.example"), Just("https://a.example/x")],
        j in prop_oneof![Just("https://a.example"), Just("https://a.example/x")],
        s in "[a-z#/]{0,4}", t in "[a-z#/]{0,4}",
    ) {
        let p = |issuer: &str, subject: &str| Subject { issuer: issuer.into(), subject: subject.into(), email: None }.principal();
        prop_assert_eq!(p(i, &s) == p(j, &t), i == j && s == t);
    }
}
