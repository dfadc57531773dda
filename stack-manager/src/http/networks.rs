//! `/v1/networks` and `/v1/subnets`: tenant networks and their subnets
//! (`store::networks` holds them and allocates addresses from them).

use api::ids::{NetworkId, SubnetId};
use api::resources::{
    AddressRange, List, Network, NetworkCreate, PageParams, ProjectPage, ProjectScope, Subnet,
    SubnetCreate,
};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use netconfig::SubnetPlan;

use crate::auth::Caller;
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult};
use crate::http::validate;
use crate::state::AppState;
use crate::store::networks::NewSubnet;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/networks", get(list).post(create))
        .route("/v1/networks/{id}", get(show).delete(delete))
        .route(
            "/v1/networks/{id}/subnets",
            get(subnet_list).post(subnet_create),
        )
        .route("/v1/subnets/{id}", get(subnet_show).delete(subnet_delete))
}

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        list,
        create,
        show,
        delete,
        subnet_list,
        subnet_create,
        subnet_show,
        subnet_delete
    ),
    components(schemas(Network, NetworkCreate, Subnet, SubnetCreate, AddressRange))
)]
pub struct Doc;

/// More than a handful of resolvers is a misconfiguration (guests read at most three).
const MAX_DNS_SERVERS: usize = 8;

#[utoipa::path(get, path = "/v1/networks", tag = "networks", params(ProjectPage),
    responses((status = 200, body = List<Network>), (status = 400, body = api::ErrorBody),
              (status = 404, body = api::ErrorBody)))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ProjectPage>,
) -> ApiResult<Json<List<Network>>> {
    Ok(Json(state.store.network_list(&caller, &q).await?))
}

#[utoipa::path(post, path = "/v1/networks", tag = "networks", params(ProjectScope),
    request_body = NetworkCreate,
    responses((status = 201, body = Network), (status = 400, body = api::ErrorBody),
              (status = 403, body = api::ErrorBody), (status = 409, body = api::ErrorBody)))]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(scope): ApiQuery<ProjectScope>,
    ApiJson(body): ApiJson<NetworkCreate>,
) -> ApiResult<(StatusCode, Json<Network>)> {
    let project = state
        .store
        .project_for_write(&caller, scope.project.as_deref(), "network")
        .await?;
    validate::name("network", &body.name)?;
    if let Some(vlan) = body.vlan {
        validate::range("vlan", vlan.into(), 1, 4094)?;
    }
    validate::range("mtu", body.mtu.into(), 576, 9216)?;
    let network = state.store.network_create(&caller, project, body).await?;
    Ok((StatusCode::CREATED, Json(network)))
}

#[utoipa::path(get, path = "/v1/networks/{id}", tag = "networks",
    params(("id" = NetworkId, Path)),
    responses((status = 200, body = Network), (status = 404, body = api::ErrorBody)))]
async fn show(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<NetworkId>,
) -> ApiResult<Json<Network>> {
    Ok(Json(state.store.network_get(&caller, id).await?))
}

#[utoipa::path(delete, path = "/v1/networks/{id}", tag = "networks",
    params(("id" = NetworkId, Path)),
    responses((status = 204), (status = 404, body = api::ErrorBody), (status = 409, body = api::ErrorBody)))]
async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<NetworkId>,
) -> ApiResult<StatusCode> {
    state.store.network_delete(&caller, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/networks/{id}/subnets", tag = "networks",
    params(("id" = NetworkId, Path), PageParams),
    responses((status = 200, body = List<Subnet>), (status = 400, body = api::ErrorBody),
              (status = 404, body = api::ErrorBody)))]
async fn subnet_list(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<NetworkId>,
    ApiQuery(page): ApiQuery<PageParams>,
) -> ApiResult<Json<List<Subnet>>> {
    Ok(Json(state.store.subnet_list(&caller, id, &page).await?))
}

/// Validates a create request into a plan: every IPAM rule violation is a
/// 400 carrying netconfig's own message.
fn plan_from_request(body: &SubnetCreate) -> ApiResult<SubnetPlan> {
    let ipam = |e: netconfig::IpamError| ApiError::invalid(e.to_string());
    let ranges = |rs: &[AddressRange]| {
        rs.iter()
            .map(|r| netconfig::AddressRange::new(r.start, r.end).map_err(ipam))
            .collect::<ApiResult<Vec<_>>>()
    };
    let plan = SubnetPlan::new(
        body.cidr,
        body.gateway,
        ranges(&body.pools)?,
        ranges(&body.reserved)?,
    )
    .map_err(ipam)?;
    if body.dns_servers.len() > MAX_DNS_SERVERS {
        return Err(ApiError::invalid(format!(
            "at most {MAX_DNS_SERVERS} dns_servers, got {}",
            body.dns_servers.len()
        )));
    }
    Ok(plan)
}

#[utoipa::path(post, path = "/v1/networks/{id}/subnets", tag = "networks",
    params(("id" = NetworkId, Path)), request_body = SubnetCreate,
    responses((status = 201, body = Subnet), (status = 400, body = api::ErrorBody),
              (status = 404, body = api::ErrorBody), (status = 409, body = api::ErrorBody)))]
async fn subnet_create(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<NetworkId>,
    ApiJson(body): ApiJson<SubnetCreate>,
) -> ApiResult<(StatusCode, Json<Subnet>)> {
    let network = state.store.network_get_for_write(&caller, id).await?;
    validate::name("subnet", &body.name)?;
    let plan = plan_from_request(&body)?;
    let new = NewSubnet {
        name: body.name,
        plan,
        dns_servers: body.dns_servers,
    };
    let subnet = state.store.subnet_create(&caller, &network, new).await?;
    Ok((StatusCode::CREATED, Json(subnet)))
}

#[utoipa::path(get, path = "/v1/subnets/{id}", tag = "networks",
    params(("id" = SubnetId, Path)),
    responses((status = 200, body = Subnet), (status = 404, body = api::ErrorBody)))]
async fn subnet_show(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<SubnetId>,
) -> ApiResult<Json<Subnet>> {
    Ok(Json(state.store.subnet_get(&caller, id).await?))
}

#[utoipa::path(delete, path = "/v1/subnets/{id}", tag = "networks",
    params(("id" = SubnetId, Path)),
    responses((status = 204), (status = 404, body = api::ErrorBody), (status = 409, body = api::ErrorBody)))]
async fn subnet_delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<SubnetId>,
) -> ApiResult<StatusCode> {
    state.store.subnet_delete(&caller, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::ErrorCode;
    use ipnet::IpNet;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn bad_requests_carry_netconfig_messages() {
        let req = |cidr: &str, pools: Vec<AddressRange>| SubnetCreate {
            name: "a".into(),
            cidr: net(cidr),
            gateway: None,
            pools,
            reserved: vec![],
            dns_servers: vec![],
        };
        let e = plan_from_request(&req("10.0.0.5/24", vec![])).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        assert!(e.message.contains("did you mean 10.0.0.0/24"), "{e}");
        let reversed = AddressRange {
            start: "10.0.0.9".parse().unwrap(),
            end: "10.0.0.2".parse().unwrap(),
        };
        let e = plan_from_request(&req("10.0.0.0/24", vec![reversed])).unwrap_err();
        assert!(e.message.contains("comes after"), "{e}");
        let plan = plan_from_request(&req("10.0.0.0/29", vec![])).unwrap();
        assert_eq!(plan.capacity(), 5);
    }
}
