"""admin_user.session_key: rotating it ends every session of the account

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 10:00:00

"""
import secrets

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('admin_user') as batch_op:
        batch_op.add_column(sa.Column('session_key', sa.String(length=32), nullable=True))

    # A random key per existing account; the sessions made before this change end with it.
    admin_user = sa.table('admin_user', sa.column('id', sa.Integer), sa.column('session_key'))
    connection = op.get_bind()
    for (user_id,) in connection.execute(sa.select(admin_user.c.id)).fetchall():
        connection.execute(
            admin_user.update()
            .where(admin_user.c.id == user_id)
            .values(session_key=secrets.token_urlsafe(12))
        )

    with op.batch_alter_table('admin_user') as batch_op:
        batch_op.alter_column('session_key', existing_type=sa.String(length=32), nullable=False)


def downgrade():
    with op.batch_alter_table('admin_user') as batch_op:
        batch_op.drop_column('session_key')
