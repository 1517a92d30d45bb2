//! What a Server sprite never does: talk plain HTTP to another machine unless the user
//! names the host, or contact any server in an offline build.

use std::net::TcpListener;

use pixelgen_build::Environment;
use pixelgen_build::FileHasher;
use pixelgen_build::Quiet;
use pixelgen_build::{Project, Session};

fn project(url: &str) -> (tempfile::TempDir, Project) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("sprites.ron"),
        format!(r#"(sprites: {{ "slime": (prompt: "green slime", size: (16, 16), generator: Server(url: ["{url}"], model: "m")) }})"#),
    )
    .unwrap();
    let project = Project {
        manifest_path: dir.path().join("sprites.ron"),
        lock_path: dir.path().join("sprites.lock"),
        cache_dir: dir.path().join("cache"),
    };
    (dir, project)
}

fn realize(
    project: &Project,
    vars: &[(&str, &str)],
    offline: bool,
) -> Result<pixelgen_build::Summary, String> {
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let environment = Environment::from_lookup(
        |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.into()),
        std::env::temp_dir(),
    );
    let mut session = Session::open(
        project.clone(),
        FileHasher::in_memory(),
        &environment,
        offline,
    )
    .map_err(|e| e.to_string())?;
    session
        .realize(offline, &mut Quiet)
        .map_err(|e| e.to_string())
}

#[test]
fn plain_http_to_another_machine_is_refused_before_any_request() {
    let (_dir, project) = project("http://192.0.2.7:9090");
    let error = realize(&project, &[], false).unwrap_err();
    assert!(
        error.contains("plain HTTP to another machine")
            && error.contains("PIXELGEN_ALLOW_HTTP=\"192.0.2.7\""),
        "{error}"
    );
    // PIXELGEN_IMAGE_SERVERS is checked the same way.
    let (_dir, project) = self::project("http://127.0.0.1:9");
    let error = realize(
        &project,
        &[("PIXELGEN_IMAGE_SERVERS", "http://gpu-9:9090")],
        false,
    )
    .unwrap_err();
    assert!(error.contains("PIXELGEN_ALLOW_HTTP=\"gpu-9\""), "{error}");
}

#[test]
fn an_offline_build_lists_stale_server_sprites_without_contacting_a_server() {
    // A listener that records whether anything connected.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (_dir, project) = project(&url);
    let error = realize(&project, &[], true).unwrap_err();
    assert!(
        error.contains("slime") && error.contains("offline"),
        "{error}"
    );
    assert!(
        listener.accept().is_err(),
        "nothing connected to the server"
    );
}

#[test]
fn an_unreachable_server_fails_a_stale_sprite_naming_it() {
    // A port nothing listens on.
    let port = pixelgen_test_support::net::free_port();
    let (_dir, project) = project(&format!("http://127.0.0.1:{port}"));
    let error = realize(&project, &[], false).unwrap_err();
    assert!(
        error.contains("slime") && error.contains(&format!("127.0.0.1:{port}")),
        "{error}"
    );
    assert!(
        !project.lock_path.exists()
            || !std::fs::read_to_string(&project.lock_path)
                .unwrap()
                .contains("slime")
    );
}
