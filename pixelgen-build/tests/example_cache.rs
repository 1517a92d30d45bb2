//! The example game's sprites, drawn again from its manifest into an empty cache, are
//! byte for byte the ones its `sprites.lock` records (and `cache/` holds): moving or
//! reorganising generator code must not change a user's pixels unless a key changes too.

use pixelgen_build::FileHasher;
use pixelgen_build::LockFile;
use pixelgen_build::Quiet;
use pixelgen_build::{Environment, Project, Session};

#[test]
fn the_example_games_committed_sprites_are_redrawn_byte_for_byte() {
    let game = pixelgen_test_support::fixtures::example_game();
    let committed = LockFile::load(&game.join("sprites.lock")).expect("sprites.lock");
    assert!(!committed.sprites.is_empty());

    // A copy of the crate's manifest and lock, and an empty cache: everything is drawn.
    let dir = tempfile::tempdir().unwrap();
    for file in ["sprites.ron", "sprites.lock"] {
        std::fs::copy(game.join(file), dir.path().join(file)).unwrap();
    }
    let cache = dir.path().join("cache");
    let project = Project::for_crate(dir.path(), Some(cache), None).unwrap();
    let mut session = Session::open(
        project,
        FileHasher::in_memory(),
        &Environment::default(),
        false,
    )
    .unwrap();
    let summary = session.realize(false, &mut Quiet).unwrap();
    assert_eq!(summary.generated, committed.sprites.len());

    let redrawn = LockFile::load(&dir.path().join("sprites.lock")).unwrap();
    for (name, locked) in &committed.sprites {
        let now = &redrawn.sprites[name];
        assert_eq!(now.keys, locked.keys, "{name}: keys");
        assert_eq!(now.outputs, locked.outputs, "{name}: pixels");
    }
}
