//! Inputs only the outside world can tell, asked for before the status stage: the model
//! identities image servers report.

use super::*;

impl Session {
    /// Asks the backends of the sprites not held back for what only the outside world
    /// can tell (an InvokeAI server's model identity) and keys again the sprites whose
    /// identity turned out different from the one the plan used. A model no server
    /// answered for keeps the identity the lock recorded (with a note): its sprites stay
    /// fresh if they were.
    pub(super) fn ask_servers_for_models(
        &mut self,
        held: &dyn Fn(&SpriteName) -> bool,
    ) -> Result<Vec<String>, Error> {
        let mut notes = Vec::new();
        for planned in &self.plan.sprites {
            let sprite = &planned.spec;
            if held(&sprite.name) {
                continue;
            }
            let reported = sprite
                .generator
                .backend()
                .report_identities(&mut self.workshop)
                .map_err(|message| GenerateError::Failed {
                    sprite: sprite.name.clone(),
                    message,
                })?;
            self.reported.extend(reported.identities);
            for note in reported.notes {
                if !notes.contains(&note) {
                    notes.push(note);
                }
            }
        }
        // Keyed again only where a server reports another identity than the plan used
        // (the lock's): the usual case, nothing changed, keys nothing again.
        let files: BTreeSet<InputFile> = self
            .plan
            .sprites
            .iter()
            .flat_map(|planned| &planned.files)
            .filter(|(file, hex)| {
                self.reported
                    .get(*file)
                    .is_some_and(|reported| reported.to_hex().as_str() != hex.as_str())
            })
            .map(|(file, _)| file.clone())
            .collect();
        if !files.is_empty() {
            let changed = Changed {
                files,
                ..Changed::default()
            };
            self.rekey(&changed, false)?;
        }
        Ok(notes)
    }
}
