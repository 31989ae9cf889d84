//! `custos keys`: make the store's keys, show which ones an instance is given and which the
//! store is bound to, and rotate the signing key.

use std::path::PathBuf;

use clap::Subcommand;
use custos_store::{Keys, Purpose};

use crate::cli::{Failure, StoreArgs, print};

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Make a new set of keys (signing, pseudonym, export) in a new folder, each file mode 0600,
    /// and print their ids. Give that folder (or its files, through a secret store) to every
    /// instance of one store before its first start.
    Create {
        /// The folder to make; it must not exist yet, or be empty.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the ids of the keys this instance is given and of the keys the store is bound to
    /// (never a secret).
    Show {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Hand signing over to a new key: the store records it with a certificate both keys sign,
    /// the old key signs nothing more, and everything it signed still verifies. The keys folder's
    /// `signing.key` is replaced; restart every instance with it.
    Rotate {
        #[command(flatten)]
        store: StoreArgs,
    },
}

pub fn command(command: KeysCommand) -> Result<(), Failure> {
    match command {
        KeysCommand::Create { out } => create(&out),
        KeysCommand::Show { store } => show(&store),
        KeysCommand::Rotate { store } => rotate(&store),
    }
}

fn create(out: &std::path::Path) -> Result<(), Failure> {
    if std::fs::read_dir(out).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(Failure::invalid_input(anyhow::anyhow!(
            "{} is not empty: keys are made only in a new folder, never over others",
            out.display()
        )));
    }
    let keys = Keys::generate(out.display().to_string()).map_err(Failure::operational)?;
    keys.write_to(out).map_err(Failure::operational)?;
    let mut text = String::new();
    for purpose in Purpose::ALL {
        text.push_str(&format!(
            "{:<10} {}  {}\n",
            purpose.as_str(),
            keys.id(purpose),
            out.join(purpose.file()).display()
        ));
    }
    print(&text)
}

fn show(store: &StoreArgs) -> Result<(), Failure> {
    let opened = store.open_existing()?;
    let mut text = format!(
        "this instance signs with {} (keys from {})\n\nthe store's keys:\n",
        opened.signing_key_id(),
        store.key_source().folder.display()
    );
    for key in opened.recorded_keys().map_err(Failure::operational)? {
        let state = match key.retired_at {
            Some(at) => format!("retired {at}"),
            None => "current".to_owned(),
        };
        let previous = key
            .previous
            .map(|p| format!(", handed over by {p}"))
            .unwrap_or_default();
        text.push_str(&format!(
            "  {:<10} {}  since {}, {state}{previous}\n",
            key.purpose.as_str(),
            key.id,
            key.since
        ));
    }
    print(&text)
}

fn rotate(store: &StoreArgs) -> Result<(), Failure> {
    let source = store.key_source();
    if source
        .variables
        .iter()
        .any(|(purpose, _)| *purpose == Purpose::Signing)
    {
        return Err(Failure::invalid_input(anyhow::anyhow!(
            "the signing key comes from ${}: rotate it with a keys folder (--keys DIR), then give the new key to your secret store",
            Purpose::Signing.variable()
        )));
    }
    let opened = store.open_existing()?;
    let current = source.folder.join(Purpose::Signing.file());
    let next_path = source
        .folder
        .join(format!("{}.next", Purpose::Signing.file()));
    // The new key is on disk before the store records it, and takes the old one's place only
    // after: a rotation stopped at any point leaves a key the store can use.
    let next = Keys::generate(String::new()).map_err(Failure::operational)?;
    let secret = next.secret(Purpose::Signing);
    custos_store::keys::write_secret(&next_path, secret).map_err(|e| {
        Failure::operational(anyhow::anyhow!(
            "{e} (a rotation that did not finish leaves {}: if `custos keys show` names its key as current, rename it to {}; if not, remove it)",
            next_path.display(),
            current.display()
        ))
    })?;
    let now = custos_http::system_now();
    let previous = opened.signing_key_id().to_owned();
    let id = match opened.rotate_signing_key(secret, now) {
        Ok(id) => id,
        Err(error) => {
            let _ = std::fs::remove_file(&next_path);
            return Err(Failure::operational(error));
        }
    };
    std::fs::rename(&next_path, &current)
        .and_then(|()| std::fs::File::open(&source.folder)?.sync_all())
        .map_err(|e| {
            Failure::operational(anyhow::anyhow!(
                "the store signs with {id} now, but {} could not replace {}: {e}; rename it by hand",
                next_path.display(),
                current.display()
            ))
        })?;
    print(&format!(
        "rotated: {previous} → {id} (from {now}); restart every instance with {}\n",
        current.display()
    ))
}
